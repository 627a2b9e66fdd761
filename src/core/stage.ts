import type { InputSpec } from '../config/input-spec.js';
import { readModelMetadata } from './model-metadata.js';
import type { Batching } from '../config/manifest.js';
import { normalizeParamsOf } from './runner/normalize.js';
import { candidateSizes, shouldBucket, shouldPadBatches, type BatchPaddingMode, type BatchTuning } from './batch-tuning.js';
import { Batcher } from './batcher.js';
import type { SessionPoolOptions } from './runner/options.js';
import { createSessionPool, type SessionPool } from './runner/session-pool.js';
import { splitBatch } from './rows.js';
import { runQueued, type ItemResult, type RunResult } from './run-result.js';
import { bucketCount, bucketOf, type SizeBuckets } from './size-buckets.js';
import { TensorBatcher } from './tensor-batcher.js';
import type { Telemetry } from './telemetry.js';
import { traceBatch, type BatchTracer } from './tracing.js';
import type { PreparedPixels } from './types.js';

/**
 * A stage is one ONNX session pool behind its dynamic batchers: the unit a task pipeline sends prepared images
 * to. A classifier or detector has one stage; OCR has two (detector, recognizer).
 *
 * The stage owns its batchers: the image batcher, where the model takes images (`input`), and, where it takes raw
 * tensors (`servesTensors`: the v2 API), a tensor batcher with the same policy. Each is created with the stage,
 * logs with the stage's logger, counts in `depth`, drains on close() and rejects its queued work on destroy(). A request's own logging (its id)
 * stays on the request's code path: nothing here keeps anything of a request once it is answered.
 *
 * Ownership: the caller owns an item's pixels until `run` resolves; the pool copies them into its shared slot, so
 * the caller may drop them afterwards. The outputs returned are views into one transferred buffer per batch.
 */


/** The runner's options a stage passes on (runner/options.ts; the logger required), and its own. */
export type StageOptions = Pick<
  SessionPoolOptions,
  'modelPath' | 'instances' | 'providers' | 'fallbackToCpu' | 'gpuDeviceId' | 'intraOpNumThreads' | 'nice' | 'onFatal' | 'warmupDims' | 'uint8Input' | 'cpuMemArena'
> &
  Required<Pick<SessionPoolOptions, 'logger'>> & {
    model: string;
    stage: string;
    /** How images become the model's input; absent for a model served as raw tensors only (it takes no images). */
    input?: InputSpec | undefined;
    batching: Batching;
    defaultTimeoutMs: number;
    /** The stage also takes raw tensor requests (the v2 API), through a tensor batcher of its own. */
    servesTensors?: boolean | undefined;
    /**
     * How items share a batch: 'same-size' batches only items of one tensor size (dynamic spatial models);
     * 'pad-width' pads every item to the batch's widest (OCR recognizer); 'fixed' for models of one input size.
     */
    shapePolicy: 'fixed' | 'same-size' | 'pad-width';
    /**
     * Size buckets for a stage of varying input sizes, and when they apply (`mode`, decided like padBatches once the
     * session exists: 'gpu', 'always', 'off'). Every item must fit the largest bucket for the shapes to stay bounded:
     * the task checks that (an item that does not fit runs at its own size).
     */
    sizeBuckets?: (SizeBuckets & { mode: BatchPaddingMode }) | undefined;
    /** 'pad-width': the batch tensor is at least this wide (the OCR recogniser: PaddleOCR's 320). */
    minTensorWidth?: number | undefined;
    telemetry: Telemetry;
    /** The model's version, for the batch spans. */
    version?: string | undefined;
    /** One span per batch run from the queues, where tracing is on (core/tracing.ts). */
    tracer?: BatchTracer | undefined;
  };

/** The value (after normalisation) a batch slot holds where its item does not reach (PaddleOCR pads crops with 0). */
export const ITEM_PAD_VALUE = 0;

/** Whether a shape policy puts items smaller than their batch slot into a batch: the slot's rest is padding. */
export function padsItems(policy: StageOptions['shapePolicy']): boolean {
  return policy === 'pad-width';
}

export class Stage {
  readonly name: string;
  readonly pool: SessionPool;
  /** The model file the stage's sessions were made from (the verified local copy of its source). */
  readonly modelPath: string;
  private metadataRead: Promise<Map<string, string>> | undefined;
  /** Prepared images, where the stage takes them (StageOptions.input); absent for a raw-tensor model. */
  readonly batcher: Batcher<PreparedPixels, ItemResult> | undefined;
  /** Raw tensor requests, where the stage serves them (StageOptions.servesTensors). */
  readonly tensors: TensorBatcher | undefined;
  /** The configured largest batch (the manifest's, or 1 for a model whose batch dimension is fixed at 1). */
  readonly maxBatchSize: number;
  readonly batching: Batching & { timeoutMs: number };
  /** The warm-up's batch-size measurement, when the stage was tuned (see applyTuning). */
  tuning: BatchTuning | undefined = undefined;
  /** Every batch runs padded to the batch limit (manifest `batching.padBatches`, decided once the session exists). */
  readonly padsBatches: boolean;
  readonly shapePolicy: StageOptions['shapePolicy'];
  /** Every input has fixed dims past the batch dimension (or the stage takes images, sized by its input spec). */
  private readonly fixedTensorDims: boolean;
  /** The size buckets batches run at, where they apply to this stage's provider (StageOptions.sizeBuckets). */
  readonly buckets: SizeBuckets | undefined;
  private readonly minTensorWidth: number;

  private constructor(opts: StageOptions, pool: SessionPool, maxBatchSize: number) {
    this.name = opts.stage;
    this.pool = pool;
    this.modelPath = opts.modelPath;
    this.maxBatchSize = maxBatchSize;
    this.shapePolicy = opts.shapePolicy;
    this.minTensorWidth = opts.shapePolicy === 'pad-width' ? (opts.minTensorWidth ?? 0) : 0;
    const sb = opts.sizeBuckets;
    this.buckets =
      opts.shapePolicy !== 'fixed' && sb !== undefined && shouldBucket(sb.mode, pool.info.provider, pool.info.nodeCounts)
        ? { widths: sb.widths, heights: sb.heights }
        : undefined;
    // Padding the batch dimension bounds the shapes only where the sizes are bounded too: one size, or buckets.
    this.padsBatches =
      (opts.shapePolicy === 'fixed' || this.buckets !== undefined) &&
      shouldPadBatches(opts.batching.padBatches, pool.info.provider, pool.info.nodeCounts, maxBatchSize);
    this.batching = { ...opts.batching, maxBatchSize, timeoutMs: opts.batching.timeoutMs ?? opts.defaultTimeoutMs };
    const { model, stage, telemetry, logger } = opts;
    this.batcher = opts.input === undefined ? undefined : new Batcher<PreparedPixels, ItemResult>({
      name: model,
      maxBatchSize,
      maxQueueDelayMs: opts.batching.maxQueueDelayMs,
      maxQueueSize: opts.batching.maxQueueSize,
      timeoutMs: this.batching.timeoutMs,
      concurrency: pool.instances,
      runBatch: (items) =>
        traceBatch(
          opts.tracer,
          () => ({ model, version: opts.version ?? '', stage, provider: pool.info.provider, size: items.length, kind: 'images' }),
          () => this.runBatch(items, opts.shapePolicy),
        ),
      ...(opts.shapePolicy === 'same-size' ? { batchKey: (item: PreparedPixels) => this.sizeKey(item) } : {}),
      hooks: {
        onBatchEnd: ({ size, durationMs, error }) => {
          telemetry.batch(model, stage, size, durationMs / 1000);
          if (error !== undefined) logger.error({ model, stage, size, err: error }, 'batch failed');
          else logger.debug({ model, stage, batchSize: size, durationMs }, 'batch run');
        },
      },
    });
    this.tensors = opts.servesTensors === true
      ? new TensorBatcher(pool, {
          model,
          stage,
          batching: this.batching,
          concurrency: pool.instances,
          telemetry,
          logger,
          version: opts.version,
          tracer: opts.tracer,
          // Rows are appended along dim 0 only where it is every input's batch dimension.
          padTo: () => (this.padsBatches && pool.info.inputs.every((i) => i.shape[0] === -1) ? this.batchLimit : undefined),
        })
      : undefined;
    this.fixedTensorDims = opts.input !== undefined || pool.info.inputs.every((i) => i.shape.slice(1).every((d) => d >= 0));
  }

  /** The model's ONNX metadata_props (model-metadata.ts), read from its file once, when first asked for. */
  metadata(): Promise<Map<string, string>> {
    this.metadataRead ??= readModelMetadata(this.modelPath);
    return this.metadataRead;
  }

  static async create(opts: StageOptions): Promise<Stage> {
    const pool = await createSessionPool({
      modelName: opts.stage === 'main' ? opts.model : `${opts.model}/${opts.stage}`,
      modelPath: opts.modelPath,
      providers: opts.providers,
      fallbackToCpu: opts.fallbackToCpu,
      gpuDeviceId: opts.gpuDeviceId,
      instances: opts.instances,
      intraOpNumThreads: opts.intraOpNumThreads,
      interOpNumThreads: 1,
      ...(opts.cpuMemArena !== undefined && { cpuMemArena: opts.cpuMemArena }),
      ...(opts.nice !== undefined && { nice: opts.nice }),
      ...(opts.input?.name !== undefined ? { inputName: opts.input.name } : {}),
      ...(opts.input !== undefined && { normalize: normalizeParamsOf(opts.input) }),
      ...(opts.warmupDims !== undefined && { warmupDims: opts.warmupDims }),
      ...(opts.uint8Input !== undefined && { uint8Input: opts.uint8Input }),
      logger: opts.logger,
      ...(opts.onFatal !== undefined ? { onFatal: opts.onFatal } : {}),
    });
    const batchDim = pool.info.inputs.find((i) => i.name === (opts.input?.name ?? pool.info.inputs[0]?.name))?.shape[0];
    // A model whose batch dimension is fixed runs that many at a time: only 1 is supported, as one request each.
    const maxBatchSize = batchDim === 1 ? 1 : opts.batching.maxBatchSize;
    return new Stage(opts, pool, maxBatchSize);
  }

  /** Requests queued in the stage's batchers, not yet running. */
  get depth(): number {
    return (this.batcher?.depth ?? 0) + (this.tensors?.depth ?? 0);
  }

  /** The largest batch formed now: maxBatchSize, or less once tuned. */
  get batchLimit(): number {
    return this.batcher?.batchLimit ?? this.maxBatchSize;
  }

  /**
   * The most distinct input shapes (runner/shape-set.ts: whole dims tuples, batch included) this stage's policy
   * lets one of its sessions run, warm-up included, or undefined where the inputs' sizes are the clients' (varying
   * image sizes without buckets, raw tensors of dynamic dims): its sizes (1 for a fixed size, else its bucket count)
   * times its batch sizes (1 where every batch, raw-tensor runs and warm-up included, is padded to the limit, plus
   * each size tuning tried where it was tuned; else maxBatchSize).
   */
  shapeBound(): number | undefined {
    if (this.shapePolicy === 'fixed' && !this.fixedTensorDims) return undefined;
    const sizes = this.shapePolicy === 'fixed' ? 1 : this.buckets !== undefined ? bucketCount(this.buckets) : undefined;
    if (sizes === undefined) return undefined;
    const batchSizes = !this.padsBatches
      ? this.maxBatchSize
      : this.tuning !== undefined
        ? candidateSizes(this.maxBatchSize).length
        : 1;
    return sizes * batchSizes;
  }

  /** Items of one key share a batch (same-size policy): their bucket where buckets apply, else their own size. */
  private sizeKey(item: PreparedPixels): string {
    const bucket = this.buckets === undefined ? undefined : bucketOf(this.buckets, item.width, item.height);
    return bucket === undefined ? `${item.width}x${item.height}` : `bucket ${bucket.width}x${bucket.height}`;
  }

  /** Caps image batches at the tuning's choice (never above maxBatchSize); tuning is of image batches only. */
  applyTuning(tuning: BatchTuning): void {
    const batcher = this.imageBatcher();
    if (!(tuning.chosen >= 1 && tuning.chosen <= this.maxBatchSize)) {
      throw new RangeError(`tuned batch size ${tuning.chosen} is outside 1..${this.maxBatchSize}`);
    }
    this.tuning = tuning;
    batcher.setBatchLimit(tuning.chosen);
  }

  /** Queues one prepared image; resolves with this item's slice of the batch outputs. */
  async run(item: PreparedPixels, signal?: AbortSignal): Promise<RunResult> {
    return runQueued(this.imageBatcher(), item, signal);
  }

  private imageBatcher(): Batcher<PreparedPixels, ItemResult> {
    if (this.batcher === undefined) throw new Error(`stage ${this.name} of a raw-tensor model takes no images`);
    return this.batcher;
  }

  /** Runs a batch directly, bypassing the queue: warm-up only. `pad: false` runs it at its own size (tuning). */
  async runDirect(items: PreparedPixels[], shapePolicy: StageOptions['shapePolicy'], { pad = true } = {}): Promise<void> {
    const results = await this.runBatch(items, shapePolicy, pad);
    const failed = results.find((r): r is Error => r instanceof Error);
    if (failed !== undefined) throw failed;
  }

  private async runBatch(
    items: PreparedPixels[],
    shapePolicy: StageOptions['shapePolicy'],
    pad = true,
  ): Promise<(ItemResult | Error)[]> {
    const first = items[0];
    if (first === undefined) return [];
    let tensorWidth = first.width;
    let tensorHeight = first.height;
    if (shapePolicy === 'pad-width' || this.buckets !== undefined) {
      tensorWidth = Math.max(tensorWidth, this.minTensorWidth);
      for (const it of items) {
        tensorWidth = Math.max(tensorWidth, it.width);
        tensorHeight = Math.max(tensorHeight, it.height);
      }
    }
    // The batch runs at the smallest bucket that holds its largest item, the items at its top-left (what lies past
    // an item is padValue: 0 after normalisation, the mean colour, as the convolutions' own zero padding).
    const bucket = this.buckets === undefined ? undefined : bucketOf(this.buckets, tensorWidth, tensorHeight);
    if (bucket !== undefined) {
      tensorWidth = bucket.width;
      tensorHeight = bucket.height;
    }
    const started = performance.now();
    const padTo = pad && this.padsBatches ? this.batchLimit : undefined;
    const outputs = await this.pool.runImages({ items, tensorHeight, tensorWidth, padValue: ITEM_PAD_VALUE, ...(padTo !== undefined && { padTo }) });
    const inferenceMs = performance.now() - started;
    return splitBatch(outputs, items.length).map((o) => ({ outputs: o, inferenceMs }));
  }

  /** Stops accepting; queued work in its batchers runs and finishes, then the sessions and workers are released. */
  async close(): Promise<void> {
    await Promise.all([this.batcher?.close(), this.tensors?.close()]);
    await this.pool.close();
  }

  /**
   * Stops accepting and rejects the work queued in its batchers with `err` (default DRAINING), for a forced
   * shutdown. Batches in flight finish (native runs cannot be interrupted); the pool is left to close().
   */
  destroy(err?: Error): void {
    this.batcher?.destroy(err);
    this.tensors?.destroy(err);
  }
}
