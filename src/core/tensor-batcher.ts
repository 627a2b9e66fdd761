import { OcularError } from '../errors.js';
import { Batcher } from './batcher.js';
import type { FeedData } from './runner/worker.js';
import type { SessionPool } from './runner/session-pool.js';
import { sliceRows, type Logger, type Stage } from './stage.js';
import type { Telemetry } from './telemetry.js';
import type { Outputs } from './types.js';

/**
 * Raw-tensor requests (the v2 protocol) on a stage's session pool, through a dynamic batcher with the stage's own
 * policy (max batch size, queue delay, queue size, timeout), so tensor requests are batched, bounded, timed out
 * and counted exactly like image requests.
 *
 * Batching: requests of one row (dim 0 = 1) with the same input names, types and other dims share a batch,
 * concatenated along dim 0; a request of several rows (a client-side batch) runs as a batch of its own. The
 * outputs are split back by each request's row count (views, no copy).
 *
 * The pool is shared with the stage's image batcher; the pool's FIFO serialises runs on its workers.
 */

export interface TensorFeed {
  data: FeedData;
  dims: number[];
  type: string;
}

export interface TensorItem {
  feeds: Record<string, TensorFeed>;
  /** dim 0 of every feed. */
  rows: number;
}

export interface TensorRunResult {
  outputs: Outputs;
  queueMs: number;
  inferenceMs: number;
  batchSize: number;
}

interface ItemResult {
  outputs: Outputs;
  inferenceMs: number;
}

export class TensorBatcher {
  readonly batcher: Batcher<TensorItem, ItemResult>;
  private solo = 0;

  constructor(
    private readonly pool: SessionPool,
    opts: {
      model: string;
      stage: string;
      batching: { maxBatchSize: number; maxQueueDelayMs: number; maxQueueSize: number; timeoutMs: number };
      concurrency: number;
      telemetry: Telemetry;
      logger: Logger;
    },
  ) {
    const { model, stage, telemetry, logger } = opts;
    this.batcher = new Batcher<TensorItem, ItemResult>({
      name: model,
      maxBatchSize: opts.batching.maxBatchSize,
      maxQueueDelayMs: opts.batching.maxQueueDelayMs,
      maxQueueSize: opts.batching.maxQueueSize,
      timeoutMs: opts.batching.timeoutMs,
      concurrency: opts.concurrency,
      runBatch: (items) => this.runBatch(items),
      batchKey: (item) =>
        item.rows === 1
          ? Object.entries(item.feeds)
              .map(([n, f]) => `${n}:${f.type}:${f.dims.join('x')}`)
              .join('|')
          : `solo:${this.solo++}`,
      hooks: {
        onBatchEnd: ({ size, durationMs, error }) => {
          telemetry.batch(model, stage, size, durationMs / 1000);
          if (error !== undefined) logger.error({ model, stage, size, err: error }, 'tensor batch failed');
        },
      },
    });
  }

  async run(item: TensorItem, signal?: AbortSignal): Promise<TensorRunResult> {
    const { result, queueMs, batchSize } = await this.batcher.enqueue(item, signal !== undefined ? { signal } : {});
    return { outputs: result.outputs, inferenceMs: result.inferenceMs, queueMs, batchSize };
  }

  private async runBatch(items: TensorItem[]): Promise<(ItemResult | Error)[]> {
    const started = performance.now();
    const outputs = await this.pool.runTensors(items.length === 1 ? (items[0] as TensorItem).feeds : concatFeeds(items));
    const inferenceMs = performance.now() - started;
    return splitRows(outputs, items.map((i) => i.rows)).map((o) => ({ outputs: o, inferenceMs }));
  }
}

function concatFeeds(items: TensorItem[]): Record<string, TensorFeed> {
  const first = items[0] as TensorItem;
  const out: Record<string, TensorFeed> = {};
  for (const [name, feed] of Object.entries(first.feeds)) {
    const total = items.reduce((n, it) => n + (it.feeds[name]?.data.length ?? 0), 0);
    const Ctor = feed.data.constructor as new (n: number) => FeedData;
    const data = new Ctor(total);
    let at = 0;
    for (const it of items) {
      const d = it.feeds[name]?.data as FeedData;
      (data as Float32Array).set(d as Float32Array, at);
      at += d.length;
    }
    const rows = items.reduce((n, it) => n + it.rows, 0);
    out[name] = { data, dims: [rows, ...feed.dims.slice(1)], type: feed.type };
  }
  return out;
}

/** Splits batch outputs (dim 0 = sum of rows) into per-request views. */
function splitRows(outputs: Outputs, rows: number[]): Outputs[] {
  const total = rows.reduce((a, b) => a + b, 0);
  const out: Outputs[] = rows.map(() => ({}));
  for (const [name, tensor] of Object.entries(outputs)) {
    if (rows.length === 1) {
      (out[0] as Outputs)[name] = tensor;
      continue;
    }
    if (tensor.dims[0] !== total || total === 0 || tensor.data.length % total !== 0) {
      throw new OcularError('INFERENCE_FAILED', `output ${name} has dims [${tensor.dims.join(',')}], expected ${total} rows`);
    }
    const per = tensor.data.length / total;
    let at = 0;
    rows.forEach((r, i) => {
      (out[i] as Outputs)[name] = sliceRows(tensor, at * per, (at + r) * per, [r, ...tensor.dims.slice(1)]);
      at += r;
    });
  }
  return out;
}

const batchers = new WeakMap<Stage, TensorBatcher>();

/** The tensor batcher of a stage, created on first use; it lives (and is collected) with the stage. */
export function tensorBatcherOf(stage: Stage, model: string, telemetry: Telemetry, logger: Logger): TensorBatcher {
  let b = batchers.get(stage);
  if (b === undefined) {
    b = new TensorBatcher(stage.pool, {
      model,
      stage: stage.name,
      batching: stage.batching,
      concurrency: stage.pool.instances,
      telemetry,
      logger,
    });
    batchers.set(stage, b);
  }
  return b;
}
