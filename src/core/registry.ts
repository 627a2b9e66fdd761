import type { Config } from '../config/config.js';
import { loadManifest, type LoadedManifest, type ModelEntry } from '../config/manifest.js';
import { OcularError, modelNotFound } from '../errors.js';
import { ModelHandle, type ModelState } from './model-handle.js';
import { fingerprintOf, localFilesOf } from './model-files.js';
import type { PipelineDeps, PipelineFactory, TaskPipeline } from './task-pipeline.js';
import { prepareImage, type DecodeLimits, type ImagePreparer } from './preprocess/image.js';
import type { Stage } from './stage.js';
import { StageLoader, type StageLoaderOptions } from './stage-loader.js';


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
 *
 * What counts as a change is the entry's fingerprint (model-files.ts): the manifest entry and the content hashes
 * of its model and label files. A reload of a model whose fingerprint is unchanged does nothing (the repository
 * API can force one); a file replaced in place under an unchanged entry is a change.
 */

export interface RegistryOptions<Pipeline extends TaskPipeline = TaskPipeline> extends StageLoaderOptions {
  manifest: LoadedManifest;
  config: StageLoaderOptions['config'] & Pick<Config, 'maxInputPixels' | 'imageFormats'> &
    Partial<Pick<Config, 'shutdownGraceMs' | 'maxJpegScans' | 'decodeTimeoutMs'>>;
  /** Builds a model's task pipeline (src/tasks/index.ts): core knows no task. */
  createPipeline: PipelineFactory<Pipeline>;
  /** Prepares images for classification and detection stages; default prepareImage in this process. */
  prepare?: ImagePreparer;
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

/** What a repository load did: built and switched to a new version, or found nothing changed. */
export interface LoadOutcome<Pipeline extends TaskPipeline = TaskPipeline> {
  handle: ModelHandle<Pipeline>;
  changed: boolean;
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

/** Readiness and, per model of the manifest, why it counts against it (or why it does not). */
export interface Readiness {
  ready: boolean;
  /** Why not ready, in one line (absent when ready). */
  reason?: string;
  models: (IndexEntry & { unloadedOnPurpose?: true })[];
}

/** `Pipeline`: what the task factory builds (PipelineFactory), which acquire() hands to the routes as it is. */
export class ModelRegistry<Pipeline extends TaskPipeline = TaskPipeline> {
  private readonly models = new Map<string, ModelHandle<Pipeline>>();
  /** Models unloaded through the repository API (or dropped from the manifest), for the repository index. */
  private readonly unloaded = new Map<string, IndexEntry>();
  /**
   * Models of the manifest an operator unloaded on purpose (repository unload): they do not count against
   * readiness, as long as some model is still served. A reload of the manifest or a load forgets them.
   */
  private readonly unloadedOnPurpose = new Set<string>();
  /** Every stage created and not yet closed, whatever version it belongs to. */
  private readonly liveStages = new Set<Stage>();
  /** Lifecycle operations, one at a time. */
  private lifecycle: Promise<unknown> = Promise.resolve();
  private manifest: LoadedManifest;
  private draining = false;
  private closed: Promise<void> | undefined;
  private readonly stageLoader: StageLoader;
  readonly limits: DecodeLimits;
  readonly prepare: ImagePreparer;

  constructor(private readonly opts: RegistryOptions<Pipeline>) {
    this.prepare = opts.prepare ?? prepareImage;
    this.stageLoader = new StageLoader(opts);
    this.manifest = opts.manifest;
    for (const entry of opts.manifest.manifest.models) this.models.set(entry.name, new ModelHandle<Pipeline>(entry));
    this.limits = {
      maxInputPixels: opts.config.maxInputPixels,
      allowedFormats: new Set(opts.config.imageFormats),
      maxJpegScans: opts.config.maxJpegScans,
      decodeTimeoutMs: opts.config.decodeTimeoutMs,
    };
  }

  list(): ModelHandle<Pipeline>[] {
    return [...this.models.values()];
  }

  has(name: string): boolean {
    return this.models.has(name);
  }

  /** The version a name serves now (whatever its state), or undefined. */
  get(name: string): ModelHandle<Pipeline> | undefined {
    return this.models.get(name);
  }

  /**
   * The model for a request: 404 when unknown, 503 when not ready or draining. The caller holds a lease on the
   * version it got and must `release` it once its work is done (the old version of a reloaded model is closed
   * only when its leases are back to 0).
   */
  acquire(name: string): ModelHandle<Pipeline> & { pipeline: Pipeline } {
    const handle = this.models.get(name);
    if (handle === undefined) throw modelNotFound(name, [...this.models.keys()]);
    if (this.draining) throw new OcularError('DRAINING');
    if (handle.state !== 'READY' || handle.pipeline === undefined) {
      throw new OcularError('MODEL_NOT_READY', `model "${name}" is ${handle.state}`);
    }
    handle.leases++;
    return handle as ModelHandle<Pipeline> & { pipeline: Pipeline };
  }

  release(handle: ModelHandle<Pipeline>): void {
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

  /** Ready: not draining, and every model of the manifest READY, bar those an operator unloaded on purpose. */
  get ready(): boolean {
    return this.readiness().ready;
  }

  /**
   * Readiness, with its reason: not ready while draining, while any model of the manifest is LOADING or
   * UNAVAILABLE (its reason given), or while a model an operator unloaded on purpose left nothing served. A
   * model unloaded on purpose is listed as such and does not count against readiness otherwise.
   */
  readiness(): Readiness {
    const served = this.list();
    const onPurpose = [...this.unloadedOnPurpose].flatMap((name) => {
      const e = this.unloaded.get(name);
      return e !== undefined ? [{ ...e, unloadedOnPurpose: true as const }] : [];
    });
    const models = [
      ...served.map((m) => ({ name: m.name, version: m.version, state: m.state, ...(m.reason !== undefined ? { reason: m.reason } : {}) })),
      ...onPurpose,
    ].sort((a, b) => a.name.localeCompare(b.name));
    const notReady = served.filter((m) => m.state !== 'READY').map((m) => `${m.name} is ${m.state}`);
    let reason: string | undefined;
    if (this.draining) reason = 'draining';
    else if (notReady.length > 0) reason = notReady.join('; ');
    else if (onPurpose.length > 0 && served.length === 0) reason = 'every model was unloaded on purpose: none is served';
    return { ready: reason === undefined, ...(reason !== undefined ? { reason } : {}), models };
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
      // The manifest as it is now says what is served: an earlier unload on purpose is forgotten.
      this.unloadedOnPurpose.clear();
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
   * version is READY and serving, with `changed: false` when it already served that fingerprint (nothing done,
   * unless `force`); rejects with the reason when it fails, the old version still serving.
   */
  loadModel(name: string, opts: { force?: boolean } = {}): Promise<LoadOutcome<Pipeline>> {
    return this.serial(async () => {
      const loaded = await loadManifest(this.manifest.path);
      const entry = loaded.manifest.models.find((m) => m.name === name);
      if (entry === undefined) {
        throw new OcularError('MODEL_NOT_FOUND', `no model named "${name.slice(0, 64)}" in the manifest ${this.manifest.path}`);
      }
      this.manifest = { ...this.manifest, baseDir: loaded.baseDir };
      const changed = await this.applyEntry(entry, opts.force === true);
      return { handle: this.models.get(name) as ModelHandle<Pipeline>, changed };
    });
  }

  /**
   * Stops serving a model on an operator's request: new requests get 404; requests in flight finish; then its
   * sessions are released. It then no longer counts against readiness (see readiness()).
   */
  unloadModel(name: string): Promise<void> {
    return this.serial(async () => {
      if (!this.models.has(name)) throw modelNotFound(name, [...this.models.keys()]);
      this.unloadedOnPurpose.add(name);
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

  /** Absolute paths of the local model and label files of every model the manifest lists (for the file watch). */
  localFiles(): string[] {
    return [...new Set(this.manifest.manifest.models.flatMap((m) => localFilesOf(m, this.manifest.baseDir).map((f) => f.path)))];
  }

  /**
   * Brings a model to `entry`. Returns false when it already serves that fingerprint (the entry and its files'
   * contents) and `force` is not set. A model not READY is replaced in place; a READY one gets the new version
   * beside the old and switches when it is ready.
   */
  private async applyEntry(entry: ModelEntry, force = false): Promise<boolean> {
    const current = this.models.get(entry.name);
    // A file that cannot be hashed is not "unchanged": the load below fails and says why.
    const fingerprint = await fingerprintOf(entry, this.manifest.baseDir).catch(() => undefined);
    if (!force && current?.state === 'READY' && fingerprint !== undefined && current.fingerprint === fingerprint) {
      return false;
    }
    const fresh = new ModelHandle<Pipeline>(entry);
    this.unloaded.delete(entry.name);
    this.unloadedOnPurpose.delete(entry.name);
    if (current === undefined || current.state !== 'READY') {
      this.models.set(entry.name, fresh);
      if (current !== undefined) await this.retire(current);
      await this.load(fresh, fingerprint);
      return true;
    }
    try {
      await this.load(fresh, fingerprint);
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
  private async retire(handle: ModelHandle<Pipeline>): Promise<void> {
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

  /** `fingerprint`: the entry's, when the caller has just computed it. */
  private async load(handle: ModelHandle<Pipeline>, fingerprint?: string): Promise<void> {
    const { logger, telemetry } = this.opts;
    const started = performance.now();
    handle.state = 'LOADING';
    handle.reason = undefined;
    logger.info({ model: handle.name, version: handle.version, task: handle.entry.task }, 'model loading');
    // Stages may be created concurrently (OCR creates its two at once); they are listed in the order asked for.
    const requested: string[] = [];
    const rank = (stage: Stage): number => requested.indexOf(stage.name === 'main' ? '' : stage.name);
    try {
      // Before anything is built: a missing file fails here, in one line naming the entry, the field and the path.
      handle.fingerprint = fingerprint ?? (await fingerprintOf(handle.entry, this.manifest.baseDir));
      const deps: PipelineDeps = {
        baseDir: this.manifest.baseDir,
        limits: this.limits,
        prepare: this.prepare,
        createStage: async (field, stageEntry, request) => {
          requested.push(field);
          const stage = await this.stageLoader.create(this.manifest.baseDir, handle, field, stageEntry, request);
          handle.stages.push(stage);
          handle.stages.sort((a, b) => rank(a) - rank(b));
          this.liveStages.add(stage);
          return stage;
        },
        resolveFile: (source, sha256) => this.stageLoader.resolveFile(this.manifest.baseDir, source, sha256),
      };
      const pipeline = await this.opts.createPipeline(handle.entry, deps);
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
            uint8Input: s.pool.info.uint8Input,
            memoryArena: s.pool.info.cpuMemArena,
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

  /** For a forced shutdown: every live stage, retiring ones included, rejects its queued work (Stage.destroy). */
  destroyQueues(): void {
    for (const s of this.liveStages) s.destroy();
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
