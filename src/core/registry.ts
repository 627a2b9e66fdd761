import { readFile } from 'node:fs/promises';
import type { Config } from '../config/config.js';
import { intraOpThreadsOf } from '../config/config.js';
import { loadManifest, type LoadedManifest, type ModelEntry, type StageEntry, type Task } from '../config/manifest.js';
import { OcularError } from '../errors.js';
import { createClassificationPipeline } from '../tasks/classification/pipeline.js';
import { createDetectionPipeline } from '../tasks/detection/pipeline.js';
import { createOcrPipeline } from '../tasks/ocr/pipeline.js';
import { createTensorPipeline } from '../tasks/tensor/pipeline.js';
import { nominalDims, type PipelineDeps, type TaskPipeline } from '../tasks/pipeline.js';
import { prepareImage, type DecodeLimits, type ImagePreparer } from '../tasks/preprocess/image.js';
import type { BatchPaddingMode, BatchTuningMode } from './batch-tuning.js';
import { resolveProviders } from './runner/providers.js';
import { Stage, type Logger } from './stage.js';
import { isHttpSource, resolveSource } from './source.js';
import type { Telemetry } from './telemetry.js';
import type { ProviderName, TensorMeta } from './types.js';

/**
 * Model lifecycle (after Triton's model states): every model in the manifest starts LOADING; loading fetches and
 * verifies its file(s), creates its session pool(s), checks the manifest against the session metadata, and warms
 * it up; then it is READY, or UNAVAILABLE with the reason. The registry owns every stage it creates and closes
 * them, including those of a model whose load failed half-way.
 *
 * Versions without downtime: loading a model that is READY (a changed manifest entry, a repository load) builds
 * the new version in a handle of its own beside the old one (fetch, verify, load, check, warm up), then switches
 * the name to it in one assignment; every request acquired after that point gets the new version. Requests hold
 * a lease on the version they acquired; the old version is released (batchers drained, sessions and workers
 * closed) once its leases are back to 0, or after the grace period. A failed load leaves the old version serving,
 * with the failure as its `reason`. Lifecycle operations (load, unload, manifest reload) run one at a time.
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
  batching: {
    /** The manifest's upper bound. */
    maxBatchSize: number;
    /** The largest batch formed: maxBatchSize, or the size warm-up tuning chose. */
    batchLimit: number;
    maxQueueDelayMs: number;
    maxQueueSize: number;
    timeoutMs: number;
    tune: BatchTuningMode;
    padBatches: BatchPaddingMode;
    /** Every run is padded to batchLimit rows (padBatches applies to this stage's provider and node placement). */
    padded: boolean;
    /** Per-image time of one batch at each size tried, when the stage was tuned. */
    tuning?: { tolerance: number; perImageMs: { size: number; ms: number }[] };
  };
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
  /** Requests that acquired this version and have not released it yet. */
  leases = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly entry: ModelEntry) {}

  release(): void {
    if (this.leases > 0) this.leases--;
    if (this.leases === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves true once no request holds this version, false if `timeoutMs` passes first. */
  whenIdle(timeoutMs: number): Promise<boolean> {
    if (this.leases === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      timer.unref();
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

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
        batchLimit: s.batchLimit,
        maxQueueDelayMs: s.batching.maxQueueDelayMs,
        maxQueueSize: s.batching.maxQueueSize,
        timeoutMs: s.batching.timeoutMs,
        tune: s.batching.tune,
        padBatches: s.batching.padBatches,
        padded: s.padsBatches,
        ...(s.tuning !== undefined && {
          tuning: {
            tolerance: s.tuning.tolerance,
            perImageMs: s.tuning.timings.map((t) => ({ size: t.size, ms: Math.round(t.perImageMs * 1000) / 1000 })),
          },
        }),
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
    'device' | 'providers' | 'gpuDeviceId' | 'cacheDir' | 'intraOpThreads' | 'computeNice' | 'requestTimeoutMs' | 'maxInputPixels' | 'imageFormats'
  > &
    Partial<Pick<Config, 'shutdownGraceMs' | 'sourceCaFile' | 'downloadStallMs' | 'allowHttpSources'>>;
  logger: Logger;
  telemetry: Telemetry;
  /** Prepares images for classification and detection stages; default prepareImage in this process. */
  prepare?: ImagePreparer;
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

/** What a manifest reload did, per model name. */
export interface ReloadReport {
  loaded: string[];
  unchanged: string[];
  unloaded: string[];
  failed: { name: string; reason: string }[];
}

export interface IndexEntry {
  name: string;
  version: string;
  state: ModelState;
  reason?: string;
}

export class ModelRegistry {
  private readonly models = new Map<string, ModelHandle>();
  /** Models unloaded through the repository API (or dropped from the manifest), for the repository index. */
  private readonly unloaded = new Map<string, IndexEntry>();
  /** Every stage created and not yet closed, whatever version it belongs to. */
  private readonly liveStages = new Set<Stage>();
  /** Lifecycle operations, one at a time. */
  private lifecycle: Promise<unknown> = Promise.resolve();
  private manifest: LoadedManifest;
  private draining = false;
  private closed: Promise<void> | undefined;
  /** http:// sources already warned about: once per source for the process, not at every reload. */
  private readonly httpSourcesWarned = new Set<string>();
  readonly limits: DecodeLimits;
  readonly prepare: ImagePreparer;

  constructor(private readonly opts: RegistryOptions) {
    this.prepare = opts.prepare ?? prepareImage;
    this.manifest = opts.manifest;
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

  /** The version a name serves now (whatever its state), or undefined. */
  get(name: string): ModelHandle | undefined {
    return this.models.get(name);
  }

  /**
   * The model for a request: 404 when unknown, 503 when not ready or draining. The caller holds a lease on the
   * version it got and must `release` it once its work is done (the old version of a reloaded model is closed
   * only when its leases are back to 0).
   */
  acquire(name: string): ModelHandle & { pipeline: TaskPipeline } {
    const handle = this.models.get(name);
    if (handle === undefined) throw new OcularError('MODEL_NOT_FOUND', `no model named "${name.slice(0, 64)}" is served`);
    if (this.draining) throw new OcularError('DRAINING');
    if (handle.state !== 'READY' || handle.pipeline === undefined) {
      throw new OcularError('MODEL_NOT_READY', `model "${name}" is ${handle.state}`);
    }
    handle.leases++;
    return handle as ModelHandle & { pipeline: TaskPipeline };
  }

  release(handle: ModelHandle): void {
    handle.release();
  }

  /** Sessions (one per worker thread) of every version not yet closed, retiring ones included. */
  get sessionCount(): number {
    let n = 0;
    for (const s of this.liveStages) n += s.pool.instances;
    return n;
  }

  /** Every model the registry knows of, served or unloaded (the repository index). */
  index(): IndexEntry[] {
    const served = this.list().map((m) => ({
      name: m.name,
      version: m.version,
      state: m.state,
      ...(m.reason !== undefined ? { reason: m.reason } : {}),
    }));
    return [...served, ...this.unloaded.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  get manifestPath(): string {
    return this.manifest.path;
  }

  /** Folder that the manifest's relative paths are resolved against. */
  get baseDir(): string {
    return this.manifest.baseDir;
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
  loadAll(): Promise<void> {
    return this.serial(async () => {
      for (const handle of [...this.models.values()]) {
        if (this.draining) return;
        if (handle.state === 'READY') continue;
        await this.load(handle);
      }
    });
  }

  /** Runs a lifecycle operation after the ones before it. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.lifecycle.then(() => {
      if (this.draining) throw new OcularError('DRAINING');
      return op();
    });
    this.lifecycle = run.catch(() => {});
    return run;
  }

  /**
   * Re-reads the manifest file and applies it: new models are loaded, changed ones get their new version beside
   * the old, removed ones are unloaded, unchanged ones are left alone. A manifest that cannot be read or is
   * invalid changes nothing (throws ManifestError). A model that fails to load keeps its old version serving and
   * is listed in `failed`.
   */
  reloadManifest(): Promise<ReloadReport> {
    return this.serial(async () => {
      const loaded = await loadManifest(this.manifest.path);
      this.manifest = loaded;
      const report: ReloadReport = { loaded: [], unchanged: [], unloaded: [], failed: [] };
      const names = new Set(loaded.manifest.models.map((m) => m.name));
      for (const name of [...this.models.keys()]) {
        if (!names.has(name)) {
          await this.unloadNow(name, 'removed from the manifest');
          report.unloaded.push(name);
        }
      }
      for (const entry of loaded.manifest.models) {
        try {
          if (await this.applyEntry(entry)) report.loaded.push(entry.name);
          else report.unchanged.push(entry.name);
        } catch (err) {
          report.failed.push({ name: entry.name, reason: err instanceof Error ? err.message : String(err) });
        }
      }
      this.opts.logger.info({ ...report }, 'manifest reloaded');
      return report;
    });
  }

  /**
   * Loads (or reloads) one model from the manifest file as it is now (the repository API). Resolves once the
   * version is READY and serving; rejects with the reason when it fails, the old version still serving.
   */
  loadModel(name: string): Promise<ModelHandle> {
    return this.serial(async () => {
      const loaded = await loadManifest(this.manifest.path);
      const entry = loaded.manifest.models.find((m) => m.name === name);
      if (entry === undefined) {
        throw new OcularError('MODEL_NOT_FOUND', `no model named "${name.slice(0, 64)}" in the manifest ${this.manifest.path}`);
      }
      this.manifest = { ...this.manifest, baseDir: loaded.baseDir };
      await this.applyEntry(entry);
      return this.models.get(name) as ModelHandle;
    });
  }

  /** Stops serving a model: new requests get 404; requests in flight finish; then its sessions are released. */
  unloadModel(name: string): Promise<void> {
    return this.serial(async () => {
      if (!this.models.has(name)) throw new OcularError('MODEL_NOT_FOUND', `no model named "${name.slice(0, 64)}" is served`);
      await this.unloadNow(name, 'unloaded');
    });
  }

  private async unloadNow(name: string, reason: string): Promise<void> {
    const handle = this.models.get(name);
    if (handle === undefined) return;
    this.models.delete(name);
    this.unloaded.set(name, { name, version: handle.version, state: 'UNAVAILABLE', reason });
    this.opts.telemetry.modelUnloaded?.(name);
    this.opts.logger.info({ model: name, version: handle.version, reason }, 'model unloaded');
    await this.retire(handle);
  }

  /**
   * Brings a model to `entry`. Returns false when it already serves exactly that entry. A model not READY is
   * replaced in place; a READY one gets the new version beside the old and switches when it is ready.
   */
  private async applyEntry(entry: ModelEntry): Promise<boolean> {
    const current = this.models.get(entry.name);
    if (current !== undefined && current.state === 'READY' && JSON.stringify(current.entry) === JSON.stringify(entry)) {
      return false;
    }
    const fresh = new ModelHandle(entry);
    this.unloaded.delete(entry.name);
    if (current === undefined || current.state !== 'READY') {
      this.models.set(entry.name, fresh);
      if (current !== undefined) await this.retire(current);
      await this.load(fresh);
      return true;
    }
    try {
      await this.load(fresh);
    } catch (err) {
      current.reason = `loading version ${entry.version} failed, version ${current.version} still serving: ${
        err instanceof Error ? err.message : String(err)
      }`;
      throw err;
    }
    // The switch: one assignment, on the event loop, so every request sees either the old version or the new.
    current.reason = undefined;
    this.models.set(entry.name, fresh);
    this.opts.logger.info({ model: entry.name, from: current.version, to: fresh.version }, 'model version switched');
    await this.retire(current);
    return true;
  }

  /** Waits for the requests holding an old version, then drains and closes its stages. */
  private async retire(handle: ModelHandle): Promise<void> {
    const graceMs = this.opts.config.shutdownGraceMs ?? 25_000;
    const idle = await handle.whenIdle(graceMs);
    if (!idle) {
      this.opts.logger.warn({ model: handle.name, version: handle.version, leases: handle.leases }, 'old version still in use after the grace period, closing it');
    }
    if (handle.state === 'READY') handle.state = 'UNAVAILABLE';
    await Promise.allSettled(handle.stages.map((s) => this.closeStage(s)));
    this.opts.logger.info({ model: handle.name, version: handle.version }, 'model version released');
  }

  private async closeStage(stage: Stage): Promise<void> {
    try {
      await stage.close();
    } finally {
      this.liveStages.delete(stage);
    }
  }

  private async load(handle: ModelHandle): Promise<void> {
    const { logger, telemetry } = this.opts;
    const started = performance.now();
    handle.state = 'LOADING';
    handle.reason = undefined;
    logger.info({ model: handle.name, version: handle.version, task: handle.entry.task }, 'model loading');
    // Stages may be created concurrently (OCR creates its two at once); they are listed in the order asked for.
    const requested: string[] = [];
    const rank = (stage: Stage): number => requested.indexOf(stage.name === 'main' ? '' : stage.name);
    try {
      const deps: PipelineDeps = {
        baseDir: this.manifest.baseDir,
        limits: this.limits,
        prepare: this.prepare,
        createStage: async (field, stageEntry, request) => {
          requested.push(field);
          const stage = await this.createStage(handle, field, stageEntry, request.shapePolicy, request.warmupDims);
          handle.stages.push(stage);
          handle.stages.sort((a, b) => rank(a) - rank(b));
          this.liveStages.add(stage);
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
            batchLimit: s.batchLimit,
            padded: s.padsBatches,
            ...(s.tuning !== undefined && { batchTuning: s.tuning.timings }),
          },
          'model stage ready',
        );
      }
      logger.info({ model: handle.name, version: handle.version, loadSeconds: handle.loadSeconds }, 'model ready');
    } catch (err) {
      handle.state = 'UNAVAILABLE';
      handle.reason = err instanceof Error ? err.message : String(err);
      telemetry.modelLoadFailed?.(handle.name);
      await Promise.allSettled(handle.stages.map((s) => this.closeStage(s)));
      handle.stages.length = 0;
      throw new ModelLoadError(handle.name, err);
    }
  }

  private async createStage(
    handle: ModelHandle,
    field: string,
    entry: StageEntry,
    shapePolicy: 'fixed' | 'same-size' | 'pad-width',
    warmupDims?: number[],
  ): Promise<Stage> {
    const { config, logger, telemetry } = this.opts;
    const allowHttp = config.allowHttpSources === true;
    if (allowHttp && isHttpSource(entry.source) && !this.httpSourcesWarned.has(entry.source)) {
      this.httpSourcesWarned.add(entry.source);
      logger.warn(
        { model: handle.name, source: entry.source },
        'model source is plain http (allowed by OCULAR_ALLOW_HTTP_SOURCES): only its sha256 protects it',
      );
    }
    // Without the option an http:// source fails here, and the model's load error names the model and the option.
    const modelPath = await resolveSource(entry.source, {
      baseDir: this.manifest.baseDir,
      cacheDir: config.cacheDir,
      sha256: entry.sha256,
      maxBytes: entry.maxDownloadBytes,
      // Extra CAs (a private model store's) and the stall limit come from the configuration.
      ...(config.sourceCaFile !== undefined && { ca: await readFile(config.sourceCaFile) }),
      ...(config.downloadStallMs !== undefined && { stallTimeoutMs: config.downloadStallMs }),
      allowHttp,
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
      nice: config.computeNice,
      warmupDims: warmupDims ?? nominalDims(entry.input, 1),
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

  /**
   * For a forced exit: no stage starts another run, and this resolves once none is inside one (true) or after
   * `timeoutMs` (false). See SessionPool.halt: exiting in the middle of a native run aborts the process.
   */
  async haltRuns(timeoutMs: number): Promise<boolean> {
    const halted = await Promise.all([...this.liveStages].map((s) => s.pool.halt(timeoutMs)));
    return halted.every(Boolean);
  }

  /** Drains: stops accepting, lets queued and in-flight work finish, then releases every session and worker. */
  close(): Promise<void> {
    this.draining = true;
    this.closed ??= (async () => {
      // Lifecycle operations stop at their next step (serial() refuses while draining); stages of every version,
      // retiring ones included, are closed.
      await Promise.allSettled([...this.liveStages].map((s) => this.closeStage(s)));
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
    case 'tensor':
      return createTensorPipeline(entry, deps);
  }
}
