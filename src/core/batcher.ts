/**
 * Dynamic batching queue, one per model. Framework-free: it knows nothing of HTTP, metrics libraries or
 * onnxruntime; the caller hands it a `runBatch` function and optional hooks.
 *
 * Policy (after Triton's dynamic batcher): max batch size, max queue delay, max queue size, per-request queue
 * timeout. Contract of `runBatch` (after dataloader): one result per input, in order; an `Error` in a slot
 * rejects only that caller. Requests whose client went away are dropped before they reach the model (after
 * text-embeddings-inference). `close()` finishes queued work, `destroy(err)` rejects it (after undici).
 *
 * Timing sketch, maxBatchSize 4, maxQueueDelayMs 10, concurrency 1 (t in ms):
 *
 *   t=0   a arrives, runner idle  -> not full, a is the oldest: arm the flush timer for t=10
 *   t=3   b arrives               -> [a b] queued, still not full, timer stays at t=10
 *   t=10  timer fires             -> run [a b]; a waited 10, b waited 7
 *   t=12  c d e f g arrive        -> runner busy: they queue, no timer (a timer only serves an idle runner)
 *   t=30  [a b] ends              -> c is the oldest and has waited 18 >= 10: run [c d e f] at once
 *   t=45  [c d e f] ends          -> g has waited 33: run [g] at once
 *
 * With maxQueueDelayMs 0 the batcher is work-conserving: an idle runner takes whatever is queued (up to
 * maxBatchSize) at once, and what arrives while every runner is busy forms the next batch the moment one ends.
 * During close() the delay is not waited for either: nothing new can arrive to fill the batch.
 *
 * With `batchKey`, only items with equal keys share a batch. The oldest queued item decides which key runs next
 * (FIFO across keys), and it is batched with the oldest items of its key (FIFO within a key).
 *
 * Invariants:
 * - an item is in exactly one state: queued (in the queue, with its abort listener and timeout timer), running
 *   (in exactly one batch), or settled; leaving the queue removes its listener and clears its timer;
 * - the flush timer is armed only while a runner is idle and the oldest item waits for its delay;
 * - an item that is aborted or past its deadline is never handed to `runBatch`;
 * - no promise made here rejects unhandled: the promise `enqueue` returns belongs to the caller, and a batch's
 *   own promise is always awaited inside a try.
 */
import { OcularError } from '../errors.js';
import type { BatcherHooks, BatcherOptions, EnqueueOptions, EnqueueResult } from './batcher-options.js';
import { systemClock, type Clock } from './clock.js';
import { LinkedFifo, type Link } from './linked-fifo.js';

interface Entry<I, O> {
  item: I;
  key: string;
  enqueuedAt: number;
  /** Clock time past which it may not start; Infinity for none. */
  deadline: number;
  resolve: (value: EnqueueResult<O>) => void;
  reject: (err: unknown) => void;
  state: 'queued' | 'running' | 'settled';
  /** Position in the queue of all items and in the queue of its key; null once it left the queue. */
  queueLink: Link<Entry<I, O>> | null;
  keyLink: Link<Entry<I, O>> | null;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | null;
  timeoutTimer: unknown;
}

function checkCount(name: string, value: number, min: number, allowInfinity: boolean): void {
  const ok = allowInfinity && value === Infinity ? true : Number.isInteger(value) && value >= min;
  if (!ok) throw new RangeError(`batcher option ${name} must be an integer >= ${min}, got ${value}`);
}

export class Batcher<I, O> {
  private readonly name: string;
  private maxBatchSize: number;
  private readonly maxQueueDelayMs: number;
  private readonly maxQueueSize: number;
  private readonly timeoutMs: number;
  private readonly concurrency: number;
  private readonly runBatch: (items: I[]) => Promise<(O | Error)[]>;
  private readonly batchKey: ((item: I) => string) | undefined;
  private readonly clock: Clock;
  private readonly hooks: BatcherHooks;

  /** Every queued item, oldest first. */
  private readonly queue = new LinkedFifo<Entry<I, O>>();
  /** Queued items per batch key, oldest first; a key with nothing queued has no entry. */
  private readonly byKey = new Map<string, LinkedFifo<Entry<I, O>>>();
  private runningBatches = 0;
  private closing = false;

  private flushTimer: unknown = null;
  private flushAt = 0;

  private idle: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(opts: BatcherOptions<I, O>) {
    checkCount('maxBatchSize', opts.maxBatchSize, 1, false);
    checkCount('concurrency', opts.concurrency, 1, false);
    checkCount('maxQueueSize', opts.maxQueueSize, 1, true);
    if (!(opts.maxQueueDelayMs >= 0 && Number.isFinite(opts.maxQueueDelayMs))) {
      throw new RangeError(`batcher option maxQueueDelayMs must be a finite number >= 0, got ${opts.maxQueueDelayMs}`);
    }
    if (!(opts.timeoutMs >= 0)) {
      throw new RangeError(`batcher option timeoutMs must be >= 0, got ${opts.timeoutMs}`);
    }
    this.name = opts.name;
    this.maxBatchSize = opts.maxBatchSize;
    this.maxQueueDelayMs = opts.maxQueueDelayMs;
    this.maxQueueSize = opts.maxQueueSize;
    this.timeoutMs = opts.timeoutMs;
    this.concurrency = opts.concurrency;
    this.runBatch = opts.runBatch;
    this.batchKey = opts.batchKey;
    this.clock = opts.clock ?? systemClock;
    this.hooks = opts.hooks ?? {};
  }

  /** The largest batch this batcher forms now. */
  get batchLimit(): number {
    return this.maxBatchSize;
  }

  /**
   * Lowers (or restores) the largest batch, e.g. to the size warm-up measured fastest per image. Batches already
   * running keep their size; the next batch formed obeys the new limit.
   */
  setBatchLimit(maxBatchSize: number): void {
    checkCount('maxBatchSize', maxBatchSize, 1, false);
    this.maxBatchSize = maxBatchSize;
    this.pump();
  }

  /** Items queued, not running. */
  get depth(): number {
    return this.queue.size;
  }

  /** Batches in flight. */
  get running(): number {
    return this.runningBatches;
  }

  get accepting(): boolean {
    return !this.closing;
  }

  enqueue(item: I, opts: EnqueueOptions = {}): Promise<EnqueueResult<O>> {
    if (this.closing) {
      return Promise.reject(new OcularError('DRAINING', `model ${this.name} is draining and accepts no new work`));
    }
    const { signal } = opts;
    if (signal?.aborted) {
      this.callHook(() => this.hooks.onDropped?.('aborted'));
      return Promise.reject(new OcularError('CLIENT_CLOSED_REQUEST', undefined, { cause: signal.reason }));
    }
    if (this.queue.size >= this.maxQueueSize) {
      return Promise.reject(
        new OcularError('QUEUE_FULL', `the queue of model ${this.name} is full (${this.maxQueueSize} waiting), retry later`),
      );
    }
    // The key is computed before anything is queued, so a throwing batchKey rejects only this caller.
    let key = '';
    if (this.batchKey) {
      try {
        key = this.batchKey(item);
      } catch (err) {
        return Promise.reject(err);
      }
    }

    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const hasDeadline = timeoutMs > 0 && Number.isFinite(timeoutMs);
    const now = this.clock.now();

    return new Promise<EnqueueResult<O>>((resolve, reject) => {
      const entry: Entry<I, O> = {
        item,
        key,
        enqueuedAt: now,
        deadline: hasDeadline ? now + timeoutMs : Infinity,
        resolve,
        reject,
        state: 'queued',
        queueLink: null,
        keyLink: null,
        signal,
        onAbort: null,
        timeoutTimer: null,
      };
      entry.queueLink = this.queue.push(entry);
      let group = this.byKey.get(key);
      if (!group) {
        group = new LinkedFifo<Entry<I, O>>();
        this.byKey.set(key, group);
      }
      entry.keyLink = group.push(entry);

      if (signal) {
        entry.onAbort = () => this.drop(entry, 'aborted');
        signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      if (hasDeadline) {
        entry.timeoutTimer = this.clock.setTimeout(() => this.drop(entry, 'timeout'), timeoutMs);
      }

      this.depthChanged();
      this.pump();
    });
  }

  /**
   * Stops accepting (new enqueues reject DRAINING); queued items run without waiting for the queue delay, and
   * in-flight batches finish. Resolves once nothing is queued or running.
   */
  close(): Promise<void> {
    this.closing = true;
    if (!this.idle) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => {
        resolve = r;
      });
      this.idle = { promise, resolve };
    }
    const { promise } = this.idle;
    this.pump();
    this.checkIdle();
    return promise;
  }

  /**
   * Stops accepting and rejects every queued item with `err` (default DRAINING). Batches in flight are not
   * interrupted: they finish and their callers get their results.
   */
  destroy(err?: Error): void {
    this.closing = true;
    this.clearFlushTimer();
    const reason = err ?? new OcularError('DRAINING', `model ${this.name} was shut down before this request ran`);
    const queued = [...this.queue];
    for (const entry of queued) this.leaveQueue(entry);
    for (const entry of queued) {
      entry.state = 'settled';
      entry.reject(reason);
    }
    if (queued.length > 0) this.depthChanged();
    this.checkIdle();
  }

  /** An aborted or expired item leaves the queue and its caller is rejected; it is never run. */
  private drop(entry: Entry<I, O>, reason: 'aborted' | 'timeout'): void {
    if (entry.state !== 'queued') return;
    this.leaveQueue(entry);
    entry.state = 'settled';
    entry.reject(
      reason === 'aborted'
        ? new OcularError('CLIENT_CLOSED_REQUEST', undefined, { cause: entry.signal?.reason })
        : new OcularError(
            'QUEUE_TIMEOUT',
            `the request waited in the queue of model ${this.name} past its timeout and was not run`,
          ),
    );
    this.callHook(() => this.hooks.onDropped?.(reason));
    this.depthChanged();
    // The oldest item may have changed: re-arm the flush timer or flush a group that is now due.
    this.pump();
    this.checkIdle();
  }

  /** Unlinks an item from both queues and releases its listener and timer. Does not settle it. */
  private leaveQueue(entry: Entry<I, O>): void {
    if (entry.queueLink) {
      this.queue.remove(entry.queueLink);
      entry.queueLink = null;
    }
    if (entry.keyLink) {
      const group = this.byKey.get(entry.key);
      if (group) {
        group.remove(entry.keyLink);
        if (group.size === 0) this.byKey.delete(entry.key);
      }
      entry.keyLink = null;
    }
    if (entry.signal && entry.onAbort) {
      entry.signal.removeEventListener('abort', entry.onAbort);
      entry.onAbort = null;
    }
    if (entry.timeoutTimer !== null) {
      this.clock.clearTimeout(entry.timeoutTimer);
      entry.timeoutTimer = null;
    }
  }

  /**
   * Starts batches while a runner is idle and a batch is due; otherwise arms the flush timer for the oldest
   * item. Called whenever the queue or the number of running batches changes, and when the flush timer fires.
   */
  private pump(): void {
    while (this.runningBatches < this.concurrency) {
      const oldest = this.queue.peek();
      if (!oldest) break;
      const now = this.clock.now();
      // Its timeout timer may not have fired yet (real timers run late); it must not start past its deadline.
      if (oldest.deadline <= now) {
        this.expireQuietly(oldest);
        continue;
      }
      const group = this.byKey.get(oldest.key);
      if (!group) break; // unreachable: a queued item is always in its key's group
      if (this.maxQueueDelayMs > 0 && !this.closing && group.size < this.maxBatchSize) {
        const flushAt = oldest.enqueuedAt + this.maxQueueDelayMs;
        if (now < flushAt) {
          this.armFlushTimer(flushAt, now);
          return;
        }
      }
      const batch: Entry<I, O>[] = [];
      for (const entry of group) {
        if (batch.length === this.maxBatchSize) break;
        if (entry.deadline > now) batch.push(entry);
      }
      // Expired items of the group that were passed over are left for their own timers (or the check above).
      for (const entry of batch) {
        this.leaveQueue(entry);
        entry.state = 'running';
      }
      this.depthChanged();
      void this.execute(batch, now);
    }
    // Every runner is busy or nothing is queued: no timer, the end of a batch or an arrival calls pump again.
    this.clearFlushTimer();
  }

  /** Like drop('timeout'), without the re-entrant pump: used from inside pump. */
  private expireQuietly(entry: Entry<I, O>): void {
    this.leaveQueue(entry);
    entry.state = 'settled';
    entry.reject(
      new OcularError('QUEUE_TIMEOUT', `the request waited in the queue of model ${this.name} past its timeout and was not run`),
    );
    this.callHook(() => this.hooks.onDropped?.('timeout'));
    this.depthChanged();
  }

  private armFlushTimer(flushAt: number, now: number): void {
    if (this.flushTimer !== null && this.flushAt === flushAt) return;
    this.clearFlushTimer();
    this.flushAt = flushAt;
    this.flushTimer = this.clock.setTimeout(() => {
      this.flushTimer = null;
      this.pump();
    }, Math.max(0, flushAt - now));
  }

  private clearFlushTimer(): void {
    if (this.flushTimer !== null) {
      this.clock.clearTimeout(this.flushTimer);
      this.flushTimer = null;
    }
  }

  /** Runs one batch and settles its callers. Never rejects: runBatch is awaited inside a try. */
  private async execute(batch: Entry<I, O>[], startedAt: number): Promise<void> {
    this.runningBatches++;
    const size = batch.length;
    this.callHook(() => this.hooks.onBatchStart?.({ size, queueWaitsMs: batch.map((e) => startedAt - e.enqueuedAt) }));

    let results: (O | Error)[] | undefined;
    let failure: unknown;
    try {
      // Called synchronously (an async function runs up to its first await), so the batch starts at once.
      const returned: unknown = await this.runBatch(batch.map((e) => e.item));
      if (!Array.isArray(returned) || returned.length !== size) {
        const got = Array.isArray(returned) ? `${returned.length} results` : typeof returned;
        throw new OcularError('INFERENCE_FAILED', `model ${this.name}: batch of ${size} returned ${got}`);
      }
      results = returned as (O | Error)[];
    } catch (err) {
      failure =
        err instanceof OcularError
          ? err
          : new OcularError('INFERENCE_FAILED', `inference failed for model ${this.name}`, { cause: err });
    }

    const durationMs = this.clock.now() - startedAt;
    this.runningBatches--;
    for (let i = 0; i < size; i++) {
      const entry = batch[i] as Entry<I, O>;
      entry.state = 'settled';
      const queueMs = startedAt - entry.enqueuedAt;
      if (results === undefined) {
        entry.reject(failure);
      } else {
        const slot = results[i] as O | Error;
        if (slot instanceof Error) entry.reject(slot);
        else entry.resolve({ result: slot, queueMs, batchSize: size });
      }
    }
    this.callHook(() =>
      this.hooks.onBatchEnd?.(results === undefined ? { size, durationMs, error: failure } : { size, durationMs }),
    );
    this.pump();
    this.checkIdle();
  }

  private depthChanged(): void {
    const depth = this.queue.size;
    this.callHook(() => this.hooks.onDepthChange?.(depth));
  }

  private checkIdle(): void {
    if (this.idle && this.queue.size === 0 && this.runningBatches === 0) {
      this.clearFlushTimer();
      this.idle.resolve();
    }
  }

  private callHook(call: () => void): void {
    try {
      call();
    } catch {
      // Hooks feed metrics; one that throws must not leave callers unsettled or the queue stuck.
    }
  }
}
