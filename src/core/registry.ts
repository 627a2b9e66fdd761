import type { Config } from '../config/config.js';
import { intraOpThreadsOf } from '../config/config.js';
import type { LoadedManifest, ModelEntry, StageEntry, Task } from '../config/manifest.js';
import { OcularError } from '../errors.js';
import { createClassificationPipeline } from '../tasks/classification/pipeline.js';
import { createDetectionPipeline } from '../tasks/detection/pipeline.js';
import { createOcrPipeline } from '../tasks/ocr/pipeline.js';
import { nominalDims, type PipelineDeps, type TaskPipeline } from '../tasks/pipeline.js';
import type { DecodeLimits } from '../tasks/preprocess/image.js';
import { resolveProviders } from './runner/providers.js';
import { Stage, type Logger } from './stage.js';
import { resolveSource } from './source.js';
import type { Telemetry } from './telemetry.js';
import type { ProviderName, TensorMeta } from './types.js';

/**
 * Model lifecycle (after Triton's model states): every model in the manifest starts LOADING; loading fetches and
 * verifies its file(s), creates its session pool(s), checks the manifest against the session metadata, and warms
 * it up; then it is READY, or UNAVAILABLE with the reason. The registry owns every stage it creates and closes
 * them, including those of a model whose load failed half-way.
 */

export type ModelState = 'LOADING' | 'READY' | 'UNAVAILABLE';

export interface StageDescription {
  stage: string;
  provider: ProviderName;
  requestedProviders: ProviderName[];
  fallbackReason?: string;
  nodeCounts: Record<string, number>;
  instances: number;
  inputs: TensorMeta[];
  outputs: TensorMeta[];
  batching: { maxBatchSize: number; maxQueueDelayMs: number; maxQueueSize: number; timeoutMs: number };
}

export interface ModelDescription {
  name: string;
  version: string;
  task: Task;
  state: ModelState;
  reason?: string;
  /** The provider of the model's (first) stage. */
  provider?: ProviderName;
  loadSeconds?: number;
  stages: StageDescription[];
}

export class ModelHandle {
  state: ModelState = 'LOADING';
  reason: string | undefined;
  pipeline: TaskPipeline | undefined;
  loadSeconds: number | undefined;
  readonly stages: Stage[] = [];

  constructor(readonly entry: ModelEntry) {}

  get name(): string {
    return this.entry.name;
  }

  get version(): string {
    return this.entry.version;
  }

  /** Requests queued or running on this model. */
  get depth(): number {
    return this.stages.reduce((n, s) => n + s.batcher.depth, 0);
  }

  describe(): ModelDescription {
    const stages = this.stages.map((s) => ({
      stage: s.name,
      provider: s.pool.info.provider,
      requestedProviders: s.pool.info.requestedProviders,
      ...(s.pool.info.fallbackReason !== undefined ? { fallbackReason: s.pool.info.fallbackReason } : {}),
      nodeCounts: s.pool.info.nodeCounts,
      instances: s.pool.instances,
      inputs: s.pool.info.inputs,
      outputs: s.pool.info.outputs,
      batching: {
        maxBatchSize: s.batching.maxBatchSize,
        maxQueueDelayMs: s.batching.maxQueueDelayMs,
        maxQueueSize: s.batching.maxQueueSize,
        timeoutMs: s.batching.timeoutMs,
      },
    }));
    const provider = stages[0]?.provider;
    return {
      name: this.name,
      version: this.version,
      task: this.entry.task,
      state: this.state,
      ...(this.reason !== undefined ? { reason: this.reason } : {}),
      ...(provider !== undefined ? { provider } : {}),
      ...(this.loadSeconds !== undefined ? { loadSeconds: this.loadSeconds } : {}),
      stages,
    };
  }
}

export interface RegistryOptions {
  manifest: LoadedManifest;
  config: Pick<
    Config,
    'device' | 'providers' | 'gpuDeviceId' | 'cacheDir' | 'intraOpThreads' | 'requestTimeoutMs' | 'maxInputPixels' | 'imageFormats'
  >;
  logger: Logger;
  telemetry: Telemetry;
  /** Called on a fatal device error at run time (main exits non-zero so the orchestrator restarts the pod). */
  onFatal?: ((err: Error) => void) | undefined;
}

export class ModelLoadError extends Error {
  constructor(
    readonly model: string,
    cause: unknown,
  ) {
    super(`model "${model}" failed to load: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'ModelLoadError';
  }
}

export class ModelRegistry {
  private readonly models = new Map<string, ModelHandle>();
  private draining = false;
  private closed: Promise<void> | undefined;
  readonly limits: DecodeLimits;

  constructor(private readonly opts: RegistryOptions) {
    for (const entry of opts.manifest.manifest.models) this.models.set(entry.name, new ModelHandle(entry));
    this.limits = {
      maxInputPixels: opts.config.maxInputPixels,
      allowedFormats: new Set(opts.config.imageFormats),
    };
  }

  list(): ModelHandle[] {
    return [...this.models.values()];
  }

  has(name: string): boolean {
    return this.models.has(name);
  }

  /** The model for a request: 404 when unknown, 503 when not ready or draining. */
  acquire(name: string): ModelHandle & { pipeline: TaskPipeline } {
    const handle = this.models.get(name);
    if (handle === undefined) throw new OcularError('MODEL_NOT_FOUND', `no model named "${name.slice(0, 64)}" is served`);
    if (this.draining) throw new OcularError('DRAINING');
    if (handle.state !== 'READY' || handle.pipeline === undefined) {
      throw new OcularError('MODEL_NOT_READY', `model "${name}" is ${handle.state}`);
    }
    return handle as ModelHandle & { pipeline: TaskPipeline };
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Every model READY and not draining. */
  get ready(): boolean {
    return !this.draining && this.list().every((m) => m.state === 'READY');
  }

  /**
   * Loads every model, one after another (they compete for the same cores). Throws ModelLoadError for the first
   * model that fails, after marking it UNAVAILABLE with the reason; the caller decides whether that is fatal.
   */
  async loadAll(): Promise<void> {
    for (const handle of this.models.values()) {
      if (this.draining) return;
      await this.load(handle);
    }
  }

  private async load(handle: ModelHandle): Promise<void> {
    const { logger, telemetry } = this.opts;
    const started = performance.now();
    handle.state = 'LOADING';
    logger.info({ model: handle.name, version: handle.version, task: handle.entry.task }, 'model loading');
    try {
      const deps: PipelineDeps = {
        baseDir: this.opts.manifest.baseDir,
        limits: this.limits,
        createStage: async (field, stageEntry, request) => {
          const stage = await this.createStage(handle, field, stageEntry, request.shapePolicy);
          handle.stages.push(stage);
          return stage;
        },
      };
      const pipeline = await createPipeline(handle.entry, deps);
      await pipeline.warmup();
      handle.pipeline = pipeline;
      handle.loadSeconds = (performance.now() - started) / 1000;
      handle.state = 'READY';
      const first = handle.stages[0]?.pool.info;
      telemetry.modelLoaded(handle.name, handle.version, first?.provider ?? 'cpu', handle.loadSeconds);
      for (const s of handle.stages) {
        logger.info(
          {
            model: handle.name,
            stage: s.name,
            provider: s.pool.info.provider,
            nodeCounts: s.pool.info.nodeCounts,
            instances: s.pool.instances,
            maxBatchSize: s.maxBatchSize,
          },
          'model stage ready',
        );
      }
      logger.info({ model: handle.name, version: handle.version, loadSeconds: handle.loadSeconds }, 'model ready');
    } catch (err) {
      handle.state = 'UNAVAILABLE';
      handle.reason = err instanceof Error ? err.message : String(err);
      await Promise.allSettled(handle.stages.map((s) => s.close()));
      handle.stages.length = 0;
      throw new ModelLoadError(handle.name, err);
    }
  }

  private async createStage(
    handle: ModelHandle,
    field: string,
    entry: StageEntry,
    shapePolicy: 'fixed' | 'same-size' | 'pad-width',
  ): Promise<Stage> {
    const { config, logger, telemetry } = this.opts;
    const modelPath = await resolveSource(entry.source, {
      baseDir: this.opts.manifest.baseDir,
      cacheDir: config.cacheDir,
      sha256: entry.sha256,
      maxBytes: entry.maxDownloadBytes,
    });
    const explicit = entry.providers ?? (Array.isArray(config.providers) ? config.providers : undefined);
    const device = config.providers === 'auto' ? 'auto' : config.device;
    const plan = resolveProviders(device, explicit);
    const stage = await Stage.create({
      model: handle.name,
      stage: field === '' ? 'main' : field,
      modelPath,
      input: entry.input,
      batching: entry.batching,
      defaultTimeoutMs: config.requestTimeoutMs,
      instances: entry.instances,
      providers: plan.providers,
      fallbackToCpu: plan.fallbackToCpu,
      gpuDeviceId: config.gpuDeviceId,
      intraOpNumThreads: intraOpThreadsOf(config),
      warmupDims: nominalDims(entry.input, 1),
      shapePolicy,
      telemetry,
      logger,
      onFatal: this.opts.onFatal,
    });
    const info = stage.pool.info;
    if (info.fallbackReason !== undefined) {
      logger.warn(
        { model: handle.name, stage: stage.name, requested: info.requestedProviders, provider: info.provider, reason: info.fallbackReason },
        'GPU execution provider unavailable, running on CPU',
      );
    }
    return stage;
  }

  /** Readiness turns false and new predictions are refused; work already accepted goes on. */
  startDraining(): void {
    this.draining = true;
  }

  /** Drains: stops accepting, lets queued and in-flight work finish, then releases every session and worker. */
  close(): Promise<void> {
    this.draining = true;
    this.closed ??= (async () => {
      await Promise.allSettled(this.list().flatMap((m) => m.stages.map((s) => s.close())));
    })();
    return this.closed;
  }
}

function createPipeline(entry: ModelEntry, deps: PipelineDeps): Promise<TaskPipeline> {
  switch (entry.task) {
    case 'image-classification':
      return createClassificationPipeline(entry, deps);
    case 'object-detection':
      return createDetectionPipeline(entry, deps);
    case 'ocr':
      return createOcrPipeline(entry, deps);
  }
}
