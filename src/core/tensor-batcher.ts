import { Batcher } from './batcher.js';
import type { FeedData, FeedTensor } from './runner/feeds.js';
import type { SessionPool } from './runner/session-pool.js';
import { splitRows } from './rows.js';
import { runQueued, type ItemResult, type RunResult } from './run-result.js';
import type { Logger } from './logger.js';
import type { Telemetry } from './telemetry.js';
import { traceBatch, type BatchTracer } from './tracing.js';

/**
 * Raw-tensor requests (the v2 protocol) on a stage's session pool, through a dynamic batcher with the stage's own
 * policy (max batch size, queue delay, queue size, timeout), so tensor requests are batched, bounded, timed out
 * and counted exactly like image requests.
 *
 * Batching: requests of one row (dim 0 = 1) with the same input names, types and other dims share a batch,
 * concatenated along dim 0; a request of several rows (a client-side batch) runs as a batch of its own. The
 * outputs are split back by each request's row count (views, no copy).
 *
 * The pool is shared with the stage's image batcher; the pool's FIFO serialises runs on its workers. The stage
 * creates, counts, drains and destroys it with its image batcher (see Stage).
 */

export interface TensorItem {
  feeds: Record<string, FeedTensor>;
  /** dim 0 of every feed. */
  rows: number;
}

export class TensorBatcher {
  private readonly batcher: Batcher<TensorItem, ItemResult>;
  private solo = 0;
  private readonly padTo: () => number | undefined;

  constructor(
    private readonly pool: SessionPool,
    opts: {
      model: string;
      stage: string;
      batching: { maxBatchSize: number; maxQueueDelayMs: number; maxQueueSize: number; timeoutMs: number };
      concurrency: number;
      telemetry: Telemetry;
      logger: Logger;
      /** The model's version and the batch spans' tracer, where tracing is on (core/tracing.ts). */
      version?: string | undefined;
      tracer?: BatchTracer | undefined;
      /**
       * Rows every run is padded to, read at each run (the stage's batch limit where it pads its batches, else
       * undefined): a padded stage's raw-tensor runs have the one shape its image runs have.
       */
      padTo?: () => number | undefined;
    },
  ) {
    this.padTo = opts.padTo ?? (() => undefined);
    const { model, stage, telemetry, logger } = opts;
    this.batcher = new Batcher<TensorItem, ItemResult>({
      name: model,
      maxBatchSize: opts.batching.maxBatchSize,
      maxQueueDelayMs: opts.batching.maxQueueDelayMs,
      maxQueueSize: opts.batching.maxQueueSize,
      timeoutMs: opts.batching.timeoutMs,
      concurrency: opts.concurrency,
      runBatch: (items) =>
        traceBatch(
          opts.tracer,
          () => ({ model, version: opts.version ?? '', stage, provider: pool.info.provider, size: items.length, kind: 'tensors' }),
          () => this.runBatch(items),
        ),
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

  run(item: TensorItem, signal?: AbortSignal): Promise<RunResult> {
    return runQueued(this.batcher, item, signal);
  }

  /** Requests queued, not running. */
  get depth(): number {
    return this.batcher.depth;
  }

  /** Stops accepting; queued requests run, and this resolves once none is queued or running. */
  close(): Promise<void> {
    return this.batcher.close();
  }

  /** Stops accepting and rejects every queued request (default DRAINING); batches in flight finish. */
  destroy(err?: Error): void {
    this.batcher.destroy(err);
  }

  private async runBatch(items: TensorItem[]): Promise<(ItemResult | Error)[]> {
    const started = performance.now();
    const padTo = this.padTo();
    const feeds = items.length === 1 ? (items[0] as TensorItem).feeds : concatFeeds(items);
    const outputs = await this.pool.runTensors(feeds, padTo);
    const inferenceMs = performance.now() - started;
    return splitRows(outputs, items.map((i) => i.rows)).map((o) => ({ outputs: o, inferenceMs }));
  }
}

function concatFeeds(items: TensorItem[]): Record<string, FeedTensor> {
  const first = items[0] as TensorItem;
  const out: Record<string, FeedTensor> = {};
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
