import fp from 'fastify-plugin';
import { MaskPool } from '../tasks/segmentation/mask-pool.js';

/**
 * Owns the postprocessing threads (`app.postprocessing`): the segmentation task's mask threads
 * (src/tasks/segmentation/mask-pool.ts), which start on first use. The registry's pipelines use them, so this
 * plugin is registered before the models plugin and closes after it (queued work has drained by then).
 */

declare module 'fastify' {
  interface FastifyInstance {
    postprocessing: { masks: MaskPool };
  }
}

export interface PostprocessingOptions {
  threads: number;
}

export const postprocessingPlugin = fp<PostprocessingOptions>(
  async (app, { threads }) => {
    const masks = new MaskPool({ threads });
    app.decorate('postprocessing', { masks });
    app.addHook('onClose', async () => {
      await masks.close();
    });
  },
  { name: 'ocular-postprocessing', fastify: '5.x' },
);
