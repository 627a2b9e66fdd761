import type { InputSpec } from '../config/input-spec.js';
import type { Batching } from '../config/manifest.js';
import { OcularError } from '../errors.js';
import { normalizeParamsOf } from '../tasks/preprocess/normalize.js';
import { shouldPadBatches, type BatchTuning } from './batch-tuning.js';
import { Batcher } from './batcher.js';
import type { InstancesSetting } from './runner/providers.js';
import { createSessionPool, type SessionPool } from './runner/session-pool.js';
import type { Telemetry } from './telemetry.js';
import type { OutputTensor, Outputs, PreparedPixels, ProviderName } from './types.js';

/**
 * A stage is one ONNX session pool behind one dynamic batcher: the unit a task pipeline sends prepared images
 * to. A classifier or detector has one stage; OCR has two (detector, recognizer).
 *
 * Ownership: the caller owns an item's pixels until `run` resolves; the pool copies them into its shared slot, so
 * the caller may drop them afterwards. The outputs returned are views into one transferred buffer per batch.
 */

export interface StageResult {
  outputs: Outputs;
  queueMs: number;
  inferenceMs: number;
  batchSize: number;
}

export interface StageOptions {
  model: string;
  stage: string;
  modelPath: string;
  input: InputSpec;
  batching: Batching;
  defaultTimeoutMs: number;
  instances: InstancesSetting;
  providers: ProviderName[];
  fallbackToCpu: boolean;
  gpuDeviceId: number;
  intraOpNumThreads: number;
  /** Nice value of the inference threads (0: unchanged); see runner/thread-priority.ts. */
  nice?: number;
  /** Dims of the profiled warm-up run, e.g. [1, 3, 224, 224]. */
  warmupDims: number[];
  /**
   * How items share a batch: 'same-size' batches only items of one tensor size (dynamic spatial models);
   * 'pad-width' pads every item to the batch's widest (OCR recognizer); 'fixed' for models of one input size.
   */
  shapePolicy: 'fixed' | 'same-size' | 'pad-width';
  telemetry: Telemetry;
  logger: Logger;
  /** A fatal device error (CUDA) at run time: the process should exit and be restarted. */
  onFatal?: ((err: Error) => void) | undefined;
}

export interface Logger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

interface ItemResult {
  outputs: Outputs;
  inferenceMs: number;
}

export class Stage {
  readonly name: string;
  readonly pool: SessionPool;
  readonly batcher: Batcher<PreparedPixels, ItemResult>;
  /** The configured largest batch (the manifest's, or 1 for a model whose batch dimension is fixed at 1). */
  readonly maxBatchSize: number;
  readonly batching: Batching & { timeoutMs: number };
  /** The warm-up's batch-size measurement, when the stage was tuned (see applyTuning). */
  tuning: BatchTuning | undefined = undefined;
  /** Every batch runs padded to the batch limit (manifest `batching.padBatches`, decided once the session exists). */
  readonly padsBatches: boolean;

  private constructor(opts: StageOptions, pool: SessionPool, maxBatchSize: number) {
    this.name = opts.stage;
    this.pool = pool;
    this.maxBatchSize = maxBatchSize;
    this.padsBatches =
      opts.shapePolicy === 'fixed' &&
      shouldPadBatches(opts.batching.padBatches, pool.info.provider, pool.info.nodeCounts, maxBatchSize);
    this.batching = { ...opts.batching, maxBatchSize, timeoutMs: opts.batching.timeoutMs ?? opts.defaultTimeoutMs };
    const { model, stage, telemetry, logger } = opts;
    this.batcher = new Batcher<PreparedPixels, ItemResult>({
      name: model,
      maxBatchSize,
      maxQueueDelayMs: opts.batching.maxQueueDelayMs,
      maxQueueSize: opts.batching.maxQueueSize,
      timeoutMs: this.batching.timeoutMs,
      concurrency: pool.instances,
      runBatch: (items) => this.runBatch(items, opts.shapePolicy),
      ...(opts.shapePolicy === 'same-size' ? { batchKey: (item: PreparedPixels) => `${item.width}x${item.height}` } : {}),
      hooks: {
        onBatchEnd: ({ size, durationMs, error }) => {
          telemetry.batch(model, stage, size, durationMs / 1000);
          if (error !== undefined) logger.error({ model, stage, size, err: error }, 'batch failed');
          else logger.debug({ model, stage, batchSize: size, durationMs }, 'batch run');
        },
      },
    });
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
      ...(opts.nice !== undefined && { nice: opts.nice }),
      ...(opts.input.name !== undefined ? { inputName: opts.input.name } : {}),
      normalize: normalizeParamsOf(opts.input),
      warmupDims: opts.warmupDims,
      logger: opts.logger,
      ...(opts.onFatal !== undefined ? { onFatal: opts.onFatal } : {}),
    });
    const batchDim = pool.info.inputs.find((i) => i.name === (opts.input.name ?? pool.info.inputs[0]?.name))?.shape[0];
    // A model whose batch dimension is fixed runs that many at a time: only 1 is supported, as one request each.
    const maxBatchSize = batchDim === 1 ? 1 : opts.batching.maxBatchSize;
    return new Stage(opts, pool, maxBatchSize);
  }

  /** The largest batch formed now: maxBatchSize, or less once tuned. */
  get batchLimit(): number {
    return this.batcher.batchLimit;
  }

  /** Caps batches at the tuning's choice (never above maxBatchSize). */
  applyTuning(tuning: BatchTuning): void {
    if (!(tuning.chosen >= 1 && tuning.chosen <= this.maxBatchSize)) {
      throw new RangeError(`tuned batch size ${tuning.chosen} is outside 1..${this.maxBatchSize}`);
    }
    this.tuning = tuning;
    this.batcher.setBatchLimit(tuning.chosen);
  }

  /** Queues one prepared image; resolves with this item's slice of the batch outputs. */
  async run(item: PreparedPixels, signal?: AbortSignal): Promise<StageResult> {
    const { result, queueMs, batchSize } = await this.batcher.enqueue(item, signal !== undefined ? { signal } : {});
    return { outputs: result.outputs, inferenceMs: result.inferenceMs, queueMs, batchSize };
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
    if (shapePolicy === 'pad-width') {
      for (const it of items) {
        tensorWidth = Math.max(tensorWidth, it.width);
        tensorHeight = Math.max(tensorHeight, it.height);
      }
    }
    const started = performance.now();
    const padTo = pad && this.padsBatches ? this.batchLimit : undefined;
    const outputs = await this.pool.runImages({ items, tensorHeight, tensorWidth, padValue: 0, ...(padTo !== undefined && { padTo }) });
    const inferenceMs = performance.now() - started;
    return splitBatch(outputs, items.length).map((o) => ({ outputs: o, inferenceMs }));
  }

  async close(): Promise<void> {
    await this.batcher.close();
    await this.pool.close();
  }
}

/** Splits batch outputs (dim 0 = n) into n per-item views; no copying. */
export function splitBatch(outputs: Outputs, n: number): Outputs[] {
  const out: Outputs[] = Array.from({ length: n }, () => ({}));
  for (const [name, tensor] of Object.entries(outputs)) {
    if (tensor.dims[0] !== n || tensor.data.length % n !== 0) {
      throw new OcularError('INFERENCE_FAILED', `output ${name} has dims [${tensor.dims.join(',')}], expected batch ${n}`);
    }
    const per = tensor.data.length / n;
    const dims = [1, ...tensor.dims.slice(1)];
    for (let i = 0; i < n; i++) (out[i] as Outputs)[name] = sliceRows(tensor, i * per, (i + 1) * per, dims);
  }
  return out;
}

/** Elements [from, to) of an output (float32 and exact alike) as views, with the given dims; no copying. */
export function sliceRows(tensor: OutputTensor, from: number, to: number, dims: number[]): OutputTensor {
  const exact = tensor.exact;
  return {
    data: tensor.data.subarray(from, to),
    dims,
    ...(exact !== undefined && { exact: { type: exact.type, data: exact.data.subarray(from, to) } }),
  };
}
