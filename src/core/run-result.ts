import type { Batcher } from './batcher.js';
import type { Outputs } from './types.js';

/** What a batch gives each of its items: the item's slice of the outputs, and the batch's inference time. */
export interface ItemResult {
  outputs: Outputs;
  inferenceMs: number;
  /** The span of the batch that ran it, where batches are traced (core/tracing.ts: traceBatch). */
  batch?: unknown;
}

/** The answer to one queued request (an image or a raw tensor request): its outputs and where its time went. */
export interface RunResult extends ItemResult {
  queueMs: number;
  batchSize: number;
  /** When it was queued (performance.now() clock): its queue wait starts here, its batch's run queueMs later. */
  enqueuedAt: number;
}

/** Queues `item` on a stage's batcher (image or tensor) and resolves with its outputs and times. */
export async function runQueued<T>(batcher: Batcher<T, ItemResult>, item: T, signal?: AbortSignal): Promise<RunResult> {
  const enqueuedAt = performance.now();
  const { result, queueMs, batchSize } = await batcher.enqueue(item, signal !== undefined ? { signal } : {});
  return { outputs: result.outputs, inferenceMs: result.inferenceMs, queueMs, batchSize, enqueuedAt, ...(result.batch !== undefined && { batch: result.batch }) };
}
