import type { Clock } from './clock.js';

/** What a Batcher (batcher.ts) is given and what it answers: its policy, its batch function, its hooks. */

export interface BatcherHooks {
  onBatchStart?(info: { size: number; queueWaitsMs: number[] }): void;
  onBatchEnd?(info: { size: number; durationMs: number; error?: unknown }): void;
  onDropped?(reason: 'aborted' | 'timeout'): void;
  onDepthChange?(depth: number): void;
}

export interface BatcherOptions<I, O> {
  /** Model name, for error messages. */
  name: string;
  /** At least 1. */
  maxBatchSize: number;
  /** 0 = work-conserving: an idle runner takes whatever is queued (up to maxBatchSize) at once. */
  maxQueueDelayMs: number;
  /** Items queued and not yet running; past it enqueue rejects QUEUE_FULL. At least 1; Infinity for no limit. */
  maxQueueSize: number;
  /** Default queue timeout per item: one not started by its deadline rejects QUEUE_TIMEOUT. 0 or Infinity: none. */
  timeoutMs: number;
  /** How many batches may run at once (the number of runner instances). At least 1. */
  concurrency: number;
  /**
   * One result per input, in order. An Error in a slot rejects only that caller, with that Error; a thrown or
   * rejected batch rejects that batch's callers only.
   */
  runBatch: (items: I[]) => Promise<(O | Error)[]>;
  /** Only items with the same key share a batch (e.g. dynamic spatial sizes). */
  batchKey?: (item: I) => string;
  clock?: Clock;
  /** For metrics. Called synchronously; a hook that throws is ignored so it cannot wedge the queue. */
  hooks?: BatcherHooks;
}

export interface EnqueueOptions {
  /** Aborting removes the item from the queue at once; it rejects CLIENT_CLOSED_REQUEST and is never run. */
  signal?: AbortSignal;
  /** Overrides the batcher's timeoutMs for this item. 0 or Infinity: no deadline. */
  timeoutMs?: number;
}

export interface EnqueueResult<O> {
  result: O;
  /** From enqueue to the start of its batch. */
  queueMs: number;
  batchSize: number;
}
