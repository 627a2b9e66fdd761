import fp from 'fastify-plugin';
import type { Config } from '../config/config.js';
import { availableCpus } from '../config/cpus.js';
import { prepareImage, type ImagePreparer } from '../core/preprocess/image.js';
import type { Logger } from '../core/logger.js';
import { PreprocessPool, resolvePreprocessProcesses } from '../core/preprocess/process-pool.js';

/**
 * Owns the preprocessing processes (src/core/preprocess/process-pool.ts): none until `start`, which the entry
 * calls once the models are loaded (`auto` is resolved from their providers); until then, and with none, images
 * are prepared in this process. The registry prepares every image through `prepare`, so it must close before
 * this plugin does: register this one first.
 */
/** How long past the decode time limit a preprocessing process may hold a request before it is ended. */
const CHILD_TIMEOUT_MARGIN_MS = 1_000;

export interface Preprocessing {
  /** Prepares an image in a child process once they are started, else in this process. */
  prepare: ImagePreparer;
  /**
   * Starts the processes the config asks for, once (`auto`: from the models' execution `providers`); resolves
   * with their number once they are ready. Starts none once the app is closing.
   */
  start(providers: readonly string[]): Promise<number>;
  /** The preprocessing processes, once started with at least one. */
  readonly pool: PreprocessPool | undefined;
}

declare module 'fastify' {
  interface FastifyInstance {
    preprocessing: Preprocessing;
  }
}

export interface PreprocessingOptions {
  config: Pick<Config, 'preprocessProcesses' | 'imageFormats' | 'computeNice' | 'decodeTimeoutMs'>;
  logger: Logger;
}

export const preprocessingPlugin = fp<PreprocessingOptions>(
  async (app, { config, logger }) => {
    const { metrics } = app;
    let pool: PreprocessPool | undefined;
    let closing = false;
    const preprocessing: Preprocessing = {
      prepare: (bytes, spec, limits, signal) =>
        pool !== undefined ? pool.prepare(bytes, spec, limits, signal) : prepareImage(bytes, spec, limits),
      async start(providers) {
        if (pool !== undefined || closing) return pool?.size ?? 0;
        const processes = resolvePreprocessProcesses(config.preprocessProcesses, providers, availableCpus());
        if (processes === 0) return 0;
        pool = new PreprocessPool({
          processes,
          imageFormats: config.imageFormats,
          nice: config.computeNice,
          // sharp's own timeout is in whole seconds and cannot stop every decode: a child is ended past it.
          requestTimeoutMs: Math.ceil(config.decodeTimeoutMs / 1000) * 1000 + CHILD_TIMEOUT_MARGIN_MS,
          logger,
          onUnexpectedExit: () => metrics.preprocessExits.inc(),
        });
        metrics.attachPreprocess(pool);
        const ready = await pool.whenReady();
        logger.info(
          { processes, ready: pool.stats().ready, setting: config.preprocessProcesses },
          ready ? 'preprocessing processes ready' : 'preprocessing processes not all ready: images are prepared in the server meanwhile',
        );
        return processes;
      },
      get pool() {
        return pool;
      },
    };
    app.decorate('preprocessing', preprocessing);
    // No start once closing begins (the registry drains in between, and must not see processes appear).
    app.addHook('preClose', async () => {
      closing = true;
    });
    app.addHook('onClose', async () => {
      closing = true;
      await pool?.close();
    });
  },
  { name: 'ocular-preprocessing', fastify: '5.x', dependencies: ['ocular-metrics'] },
);
