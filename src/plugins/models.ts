import fp from 'fastify-plugin';
import type { Logger } from 'pino';
import type { LoadedManifest } from '../config/manifest.js';
import { ModelRegistry, type RegistryOptions } from '../core/registry.js';
import type { PipelineFactory } from '../core/task-pipeline.js';
import type { ServedPipeline } from '../tasks/index.js';

/**
 * Owns the model registry (`app.models`): built from the manifest, with the metrics as its telemetry and the
 * preprocessing plugin's `prepare` for its images; models are loaded by `app.models.loadAll()` (the entry calls
 * it after listening). Closing drains it: queued work finishes, then every stage is closed. Registered after the
 * plugins whose resources it uses (metrics, preprocessing, the v2 parser), so it closes before them.
 */

declare module 'fastify' {
  interface FastifyInstance {
    models: ModelRegistry<ServedPipeline>;
  }
}

export interface ModelsOptions {
  manifest: LoadedManifest;
  config: RegistryOptions['config'];
  logger: Logger;
  /** A fatal device error at run time; main exits non-zero. */
  onFatal?: ((err: Error) => void) | undefined;
  /** The tasks' factory (src/tasks/index.ts), handed down by the entry: core knows no task. */
  createPipeline: PipelineFactory<ServedPipeline>;
}

export const modelsPlugin = fp<ModelsOptions>(
  async (app, { manifest, config, logger, onFatal, createPipeline }) => {
    const models = new ModelRegistry({
      manifest,
      config,
      logger,
      telemetry: app.metrics,
      batchTracer: app.tracing.batches,
      onFatal,
      prepare: app.preprocessing.prepare,
      createPipeline,
    });
    app.metrics.attach(models);
    app.decorate('models', models);
    app.addHook('onClose', async () => {
      await models.close();
    });
  },
  { name: 'ocular-models', fastify: '5.x', dependencies: ['ocular-metrics', 'ocular-tracing', 'ocular-preprocessing'] },
);
