import type { ModelEntry, Task } from '../config/manifest.js';
import type { ProviderName } from '../config/providers.js';
import type { BatchPaddingMode, BatchTuningMode } from './batch-tuning.js';
import type { Stage } from './stage.js';
import type { TaskPipeline } from './task-pipeline.js';
import type { TensorMeta } from './types.js';

/** One version of a served model: its state, stages and pipeline, the leases requests hold on it, and its description. */

export type ModelState = 'LOADING' | 'READY' | 'UNAVAILABLE';

export interface StageDescription {
  stage: string;
  provider: ProviderName;
  requestedProviders: ProviderName[];
  fallbackReason?: string;
  nodeCounts: Record<string, number>;
  instances: number;
  /**
   * Distinct input shapes (whole dims, batch included) each session has run, by instance, and the most the
   * stage's policy allows where known (Stage.shapeBound).
   */
  shapes: { perSession: number[]; bound?: number };
  /** Images reach the session as uint8 pixels, normalised by a prefix in its graph (manifest `input.uint8Input`). */
  uint8Input: boolean;
  /** The sessions keep onnxruntime's CPU memory arena (manifest `memoryArena`). */
  memoryArena: boolean;
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
    /** The size buckets batches run at, where they apply (an OCR stage's `shapeBuckets`). */
    buckets?: { widths: number[]; heights: number[] };
    /** The most distinct input shapes the stage's image batches can run (Stage.shapeBound); absent: unbounded. */
    shapeBound?: number;
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

export class ModelHandle<Pipeline extends TaskPipeline = TaskPipeline> {
  state: ModelState = 'LOADING';
  reason: string | undefined;
  pipeline: Pipeline | undefined;
  loadSeconds: number | undefined;
  /** The entry's fingerprint (model-files.ts) when this version was built: what a reload compares. */
  fingerprint: string | undefined;
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

  /** Requests queued on this model, images and raw tensors alike. */
  get depth(): number {
    return this.stages.reduce((n, s) => n + s.depth, 0);
  }

  describe(): ModelDescription {
    const stages = this.stages.map((s) => {
      const bound = s.shapeBound();
      return {
        stage: s.name,
        provider: s.pool.info.provider,
        requestedProviders: s.pool.info.requestedProviders,
        ...(s.pool.info.fallbackReason !== undefined ? { fallbackReason: s.pool.info.fallbackReason } : {}),
        nodeCounts: s.pool.info.nodeCounts,
        instances: s.pool.instances,
        shapes: { perSession: s.pool.shapeCounts(), ...(bound !== undefined && { bound }) },
        uint8Input: s.pool.info.uint8Input,
        memoryArena: s.pool.info.cpuMemArena,
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
          ...(s.buckets !== undefined && { buckets: { widths: [...s.buckets.widths], heights: [...s.buckets.heights] } }),
          ...(bound !== undefined && { shapeBound: bound }),
          ...(s.tuning !== undefined && {
            tuning: {
              tolerance: s.tuning.tolerance,
              perImageMs: s.tuning.timings.map((t) => ({ size: t.size, ms: Math.round(t.perImageMs * 1000) / 1000 })),
            },
          }),
        },
      };
    });
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
