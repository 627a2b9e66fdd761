import { getEventListeners } from 'node:events';
import t from 'tap';
import { Batcher } from '../../src/core/batcher.js';
import type { BatcherOptions, EnqueueResult } from '../../src/core/batcher-options.js';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { OcularError } from '../../src/errors.js';

/** A clock whose time moves only when the test advances it; due timers fire in order of due time. */
class FakeClock implements Clock {
  private time = 0;
  private seq = 0;
  private readonly timers = new Map<number, { due: number; fn: () => void }>();

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { due: this.time + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  get pendingTimers(): number {
    return this.timers.size;
  }

  advance(ms: number): void {
    const target = this.time + ms;
    for (;;) {
      let next: { id: number; due: number; fn: () => void } | undefined;
      for (const [id, timer] of this.timers) {
        if (timer.due <= target && (!next || timer.due < next.due)) next = { id, ...timer };
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.time = Math.max(this.time, next.due);
      next.fn();
    }
    this.time = target;
  }
}

interface Call<I, O> {
  items: I[];
  resolve(results: (O | Error)[]): void;
  reject(err: unknown): void;
}

/** A runBatch whose batches stay pending until the test settles them by hand. */
function createFakeRunner<I, O>() {
  const calls: Call<I, O>[] = [];
  const runBatch = (items: I[]): Promise<(O | Error)[]> =>
    new Promise((resolve, reject) => {
      calls.push({ items: [...items], resolve, reject });
    });
  const call = (i: number): Call<I, O> => {
    const c = calls[i];
    if (!c) throw new Error(`runBatch call ${i} was not made (${calls.length} made)`);
    return c;
  };
  return { calls, runBatch, call };
}

/** Lets pending promise callbacks run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

interface Tracked<O> {
  status: 'pending' | 'resolved' | 'rejected';
  value?: EnqueueResult<O>;
  error?: unknown;
}

/** Observes a promise without leaving a rejection unhandled. */
function track<O>(promise: Promise<EnqueueResult<O>>): Tracked<O> {
  const tracked: Tracked<O> = { status: 'pending' };
  promise.then(
    (value) => {
      tracked.status = 'resolved';
      tracked.value = value;
    },
    (error: unknown) => {
      tracked.status = 'rejected';
      tracked.error = error;
    },
  );
  return tracked;
}

function codeOf(err: unknown): string | undefined {
  return err instanceof OcularError ? err.code : undefined;
}

/** Echo results: item n -> 'r' + n. */
const echo = (items: number[]): string[] => items.map((n) => `r${n}`);

function setup(overrides: Partial<BatcherOptions<number, string>> = {}) {
  const clock = new FakeClock();
  const runner = createFakeRunner<number, string>();
  const batcher = new Batcher<number, string>({
    name: 'test-model',
    maxBatchSize: 4,
    maxQueueDelayMs: 0,
    maxQueueSize: 100,
    timeoutMs: 0,
    concurrency: 1,
    runBatch: runner.runBatch,
    clock,
    ...overrides,
  });
  const enqueue = (item: number, opts?: Parameters<typeof batcher.enqueue>[1]) => track(batcher.enqueue(item, opts));
  return { clock, runner, batcher, enqueue };
}

t.test('a batch never holds more than maxBatchSize items', async (t) => {
  const { runner, enqueue } = setup({ maxBatchSize: 3 });
  const all = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => enqueue(n));
  for (let i = 0; i < 4; i++) {
    const c = runner.call(i);
    c.resolve(echo(c.items));
    await settle();
  }
  t.same(
    runner.calls.map((c) => c.items),
    [[1], [2, 3, 4], [5, 6, 7], [8]],
  );
  t.ok(all.every((r) => r.status === 'resolved'));
  t.same(
    all.map((r) => r.value?.result),
    ['r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7', 'r8'],
  );
  t.same(
    all.map((r) => r.value?.batchSize),
    [1, 3, 3, 3, 3, 3, 3, 1],
  );
});

t.test('with no queue delay a lone request runs at once and arrivals during a batch form the next batch as it ends', async (t) => {
  const { runner, batcher, enqueue } = setup({ maxQueueDelayMs: 0 });
  const first = enqueue(1);
  t.equal(runner.calls.length, 1, 'runBatch called synchronously, without waiting for a timer');
  t.same(runner.call(0).items, [1]);
  t.equal(batcher.running, 1);

  const later = [2, 3, 4].map((n) => enqueue(n));
  t.equal(runner.calls.length, 1, 'no second batch while the only runner is busy');
  t.equal(batcher.depth, 3);

  runner.call(0).resolve(['r1']);
  await settle();
  t.equal(runner.calls.length, 2);
  t.same(runner.call(1).items, [2, 3, 4], 'everything that accumulated forms the next batch');
  t.equal(first.status, 'resolved');
  t.same(first.value, { result: 'r1', queueMs: 0, batchSize: 1 });

  runner.call(1).resolve(['r2', 'r3', 'r4']);
  await settle();
  t.same(
    later.map((r) => r.value?.result),
    ['r2', 'r3', 'r4'],
  );
  t.equal(batcher.running, 0);
  t.equal(batcher.depth, 0);
});

t.test('with a 10 ms queue delay items wait until 10 ms have passed or the batch is full, whichever is first', async (t) => {
  const { clock, runner, batcher, enqueue } = setup({ maxQueueDelayMs: 10, maxBatchSize: 3 });

  t.test('the delay expires first', async (t) => {
    const a = enqueue(1);
    clock.advance(4);
    const b = enqueue(2);
    clock.advance(5);
    t.equal(runner.calls.length, 0, 'not run before the oldest has waited 10 ms');
    clock.advance(1);
    t.equal(runner.calls.length, 1, 'run when the oldest has waited 10 ms');
    t.same(runner.call(0).items, [1, 2]);
    runner.call(0).resolve(['r1', 'r2']);
    await settle();
    t.equal(a.value?.queueMs, 10);
    t.equal(b.value?.queueMs, 6);
    t.equal(clock.pendingTimers, 0, 'no timer left once the queue is empty');
  });

  t.test('the batch fills first', async (t) => {
    const before = runner.calls.length;
    enqueue(3);
    clock.advance(2);
    enqueue(4);
    t.equal(runner.calls.length, before);
    enqueue(5);
    t.equal(runner.calls.length, before + 1, 'a full batch runs without waiting for the delay');
    t.same(runner.call(before).items, [3, 4, 5]);
    t.equal(clock.pendingTimers, 0, 'the flush timer is cleared when the batch flushes early');
    runner.call(before).resolve(['r3', 'r4', 'r5']);
    await settle();
    t.equal(batcher.depth, 0);
  });

  t.test('items that waited through a running batch run as soon as it ends', async (t) => {
    const before = runner.calls.length;
    enqueue(6); // waits for the delay
    clock.advance(10);
    t.equal(runner.calls.length, before + 1);
    enqueue(7);
    clock.advance(15); // the runner is busy the whole time
    t.equal(runner.calls.length, before + 1);
    runner.call(before).resolve(['r6']);
    await settle();
    t.equal(runner.calls.length, before + 2, 'item 7 has already waited past the delay');
    t.same(runner.call(before + 1).items, [7]);
    runner.call(before + 1).resolve(['r7']);
    await settle();
  });
});

t.test('a full queue rejects QUEUE_FULL without disturbing the queued items', async (t) => {
  const { runner, batcher, enqueue } = setup({ maxQueueSize: 2, maxBatchSize: 8 });
  const running = enqueue(1); // runs at once, so it does not count against the queue
  const queued = [enqueue(2), enqueue(3)];
  const refused = enqueue(4);
  await settle();
  t.equal(refused.status, 'rejected');
  t.equal(codeOf(refused.error), 'QUEUE_FULL');
  t.match((refused.error as Error).message, /test-model/);
  t.equal(batcher.depth, 2);

  runner.call(0).resolve(['r1']);
  await settle();
  t.same(runner.call(1).items, [2, 3]);
  runner.call(1).resolve(['r2', 'r3']);
  await settle();
  t.equal(running.status, 'resolved');
  t.same(
    queued.map((r) => r.value?.result),
    ['r2', 'r3'],
  );
});

t.test('an item whose deadline passes before a runner is free rejects QUEUE_TIMEOUT and is never run', async (t) => {
  const dropped: string[] = [];
  const { clock, runner, batcher, enqueue } = setup({ timeoutMs: 50, hooks: { onDropped: (r) => dropped.push(r) } });
  const first = enqueue(1);
  clock.advance(10);
  const late = enqueue(2); // deadline t=60
  const patient = enqueue(3, { timeoutMs: 500 }); // per-request override
  const noDeadline = enqueue(4, { timeoutMs: 0 });
  clock.advance(49);
  await settle();
  t.equal(late.status, 'pending', 'not yet at its deadline');
  clock.advance(1);
  await settle();
  t.equal(late.status, 'rejected', 'rejected at its deadline, while the runner is still busy');
  t.equal(codeOf(late.error), 'QUEUE_TIMEOUT');
  t.equal(batcher.depth, 2);
  t.same(dropped, ['timeout']);

  runner.call(0).resolve(['r1']);
  await settle();
  t.same(runner.call(1).items, [3, 4], 'runBatch never sees the expired item');
  runner.call(1).resolve(['r3', 'r4']);
  await settle();
  t.equal(first.value?.result, 'r1', 'the item that started in time is unaffected by its later deadline');
  t.equal(patient.value?.result, 'r3');
  t.equal(noDeadline.value?.result, 'r4');
  t.equal(clock.pendingTimers, 0, 'timeout timers are cleared when items leave the queue');
});

t.test('an aborted item is dropped before inference and the others still run', async (t) => {
  const dropped: string[] = [];
  const { runner, batcher, enqueue } = setup({ hooks: { onDropped: (r) => dropped.push(r) } });
  const first = enqueue(1);
  const controller = new AbortController();
  const kept = new AbortController();
  const aborted = enqueue(2, { signal: controller.signal });
  const others = [enqueue(3, { signal: kept.signal }), enqueue(4)];
  t.equal(getEventListeners(controller.signal, 'abort').length, 1);
  t.equal(batcher.depth, 3);

  controller.abort(new Error('socket closed'));
  await settle();
  t.equal(aborted.status, 'rejected', 'rejected at once, while the runner is busy');
  t.equal(codeOf(aborted.error), 'CLIENT_CLOSED_REQUEST');
  t.equal(batcher.depth, 2, 'removed from the queue at once');
  t.same(dropped, ['aborted']);
  t.equal(getEventListeners(controller.signal, 'abort').length, 0);

  runner.call(0).resolve(['r1']);
  await settle();
  t.same(runner.call(1).items, [3, 4], 'runBatch never sees the aborted item');
  t.equal(getEventListeners(kept.signal, 'abort').length, 0, 'the listener goes when an item starts running');
  runner.call(1).resolve(['r3', 'r4']);
  await settle();
  t.equal(first.value?.result, 'r1');
  t.same(
    others.map((r) => r.value?.result),
    ['r3', 'r4'],
  );
});

t.test('an already-aborted signal rejects at once and queues nothing', async (t) => {
  const dropped: string[] = [];
  const { runner, batcher, enqueue } = setup({ hooks: { onDropped: (r) => dropped.push(r) } });
  const r = enqueue(1, { signal: AbortSignal.abort() });
  await settle();
  t.equal(codeOf(r.error), 'CLIENT_CLOSED_REQUEST');
  t.equal(runner.calls.length, 0);
  t.equal(batcher.depth, 0);
  t.same(dropped, ['aborted']);
});

t.test('an Error in one slot rejects only that caller', async (t) => {
  const { clock, runner, enqueue } = setup({ maxBatchSize: 3, maxQueueDelayMs: 5 });
  const results = [enqueue(1), enqueue(2), enqueue(3)];
  clock.advance(5);
  const slotError = new Error('postprocess failed for item 2');
  runner.call(0).resolve(['r1', slotError, 'r3']);
  await settle();
  t.equal(results[0]?.value?.result, 'r1');
  t.equal(results[1]?.status, 'rejected');
  t.equal(results[1]?.error, slotError, 'the caller gets the Error from its slot');
  t.equal(results[2]?.value?.result, 'r3');
});

t.test('a batch that throws rejects only its own items and the next batch runs', async (t) => {
  const ends: { size: number; error?: unknown }[] = [];
  const { runner, batcher, enqueue } = setup({ hooks: { onBatchEnd: (i) => ends.push(i) } });
  const first = enqueue(1);
  const next = [enqueue(2), enqueue(3)];
  const cause = new Error('CUDA out of memory');
  runner.call(0).reject(cause);
  await settle();
  t.equal(first.status, 'rejected');
  t.equal(codeOf(first.error), 'INFERENCE_FAILED');
  t.equal((first.error as Error).cause, cause);
  t.ok(next.every((r) => r.status === 'pending'), 'queued items are untouched');
  t.same(runner.call(1).items, [2, 3], 'the next batch runs');
  runner.call(1).resolve(['r2', 'r3']);
  await settle();
  t.same(
    next.map((r) => r.value?.result),
    ['r2', 'r3'],
  );
  t.equal(ends.length, 2);
  t.equal((ends[0]?.error as OcularError | undefined)?.code, 'INFERENCE_FAILED');
  t.notOk(ends[1] && 'error' in ends[1], 'a successful batch reports no error');
  t.equal(batcher.running, 0);
});

t.test('a runBatch that throws synchronously rejects its batch only', async (t) => {
  let calls = 0;
  const s = setup({
    runBatch: (items) => {
      calls++;
      if (calls === 1) throw new Error('boom');
      return Promise.resolve(echo(items));
    },
  });
  const a = s.enqueue(1);
  const b = s.enqueue(2);
  await settle();
  t.equal(codeOf(a.error), 'INFERENCE_FAILED');
  t.equal(b.value?.result, 'r2');
});

t.test('a runBatch that returns the wrong number of results rejects the batch with INFERENCE_FAILED', async (t) => {
  const { runner, enqueue } = setup({ maxBatchSize: 2 });
  const a = enqueue(1);
  runner.call(0).resolve([]);
  await settle();
  t.equal(codeOf(a.error), 'INFERENCE_FAILED');
  t.match((a.error as Error).message, /batch of 1 returned 0 results/);
  const b = enqueue(2);
  runner.call(1).resolve(['x', 'y']);
  await settle();
  t.equal(codeOf(b.error), 'INFERENCE_FAILED');
});

t.test('an OcularError thrown by runBatch reaches the callers unchanged', async (t) => {
  const { runner, enqueue } = setup();
  const a = enqueue(1);
  const err = new OcularError('MODEL_NOT_READY');
  runner.call(0).reject(err);
  await settle();
  t.equal(a.error, err);
});

t.test('with concurrency 2 two batches run at once', async (t) => {
  const { runner, batcher, enqueue } = setup({ concurrency: 2, maxBatchSize: 2 });
  const rs = [1, 2, 3, 4, 5].map((n) => enqueue(n));
  t.equal(runner.calls.length, 2, 'each idle runner took a batch at once');
  t.same(runner.call(0).items, [1]);
  t.same(runner.call(1).items, [2]);
  t.equal(batcher.running, 2);
  t.equal(batcher.depth, 3);

  runner.call(1).resolve(['r2']); // the second finishes first
  await settle();
  t.same(runner.call(2).items, [3, 4], 'the freed runner takes the next batch while the other still runs');
  t.equal(batcher.running, 2);
  t.equal(batcher.depth, 1);
  runner.call(0).resolve(['r1']);
  await settle();
  t.same(runner.call(3).items, [5]);
  t.equal(batcher.running, 2, 'both runners busy again');
  runner.call(2).resolve(['r3', 'r4']);
  runner.call(3).resolve(['r5']);
  await settle();
  t.same(
    rs.map((r) => r.value?.result),
    ['r1', 'r2', 'r3', 'r4', 'r5'],
  );
  t.equal(batcher.running, 0);
});

t.test('batchKey keeps shapes apart, FIFO by the oldest item', async (t) => {
  const clock = new FakeClock();
  const runner = createFakeRunner<{ id: string; shape: string }, string>();
  const batcher = new Batcher<{ id: string; shape: string }, string>({
    name: 'ocr',
    maxBatchSize: 4,
    maxQueueDelayMs: 0,
    maxQueueSize: 100,
    timeoutMs: 0,
    concurrency: 1,
    runBatch: runner.runBatch,
    batchKey: (item) => item.shape,
    clock,
  });
  const item = (id: string, shape: string) => ({ id, shape });
  const rs = [
    item('a0', '32x100'),
    item('b1', '32x200'),
    item('a1', '32x100'),
    item('b2', '32x200'),
    item('a2', '32x100'),
    item('c1', '32x300'),
  ].map((i) => track(batcher.enqueue(i)));
  const ids = (i: number) => runner.call(i).items.map((x) => x.id);

  t.same(ids(0), ['a0']);
  runner.call(0).resolve(['a0']);
  await settle();
  t.same(ids(1), ['b1', 'b2'], 'the oldest queued item is b1: its key runs next, without a-shaped items');
  runner.call(1).resolve(['b1', 'b2']);
  await settle();
  t.same(ids(2), ['a1', 'a2']);
  runner.call(2).resolve(['a1', 'a2']);
  await settle();
  t.same(ids(3), ['c1']);
  runner.call(3).resolve(['c1']);
  await settle();
  t.same(
    rs.map((r) => r.value?.result),
    ['a0', 'b1', 'a1', 'b2', 'a2', 'c1'],
  );
});

t.test('a delayed batcher with batchKey fills a batch per key', async (t) => {
  const clock = new FakeClock();
  const runner = createFakeRunner<string, string>();
  const batcher = new Batcher<string, string>({
    name: 'det',
    maxBatchSize: 2,
    maxQueueDelayMs: 10,
    maxQueueSize: 100,
    timeoutMs: 0,
    concurrency: 1,
    runBatch: runner.runBatch,
    batchKey: (item) => item[0] ?? '',
    clock,
  });
  track(batcher.enqueue('a1'));
  track(batcher.enqueue('b1'));
  clock.advance(3);
  t.equal(runner.calls.length, 0, 'two items queued but of different keys: not a full batch');
  track(batcher.enqueue('a2'));
  t.same(runner.call(0).items, ['a1', 'a2'], 'a full batch of the oldest key flushes at once');
  runner.call(0).resolve(['a1', 'a2']);
  await settle();
  t.equal(runner.calls.length, 1, 'b1 has waited 3 ms of its 10');
  clock.advance(7);
  t.same(runner.call(1).items, ['b1']);
  runner.call(1).resolve(['b1']);
  await settle();
});

t.test('close refuses new work with DRAINING while queued and in-flight items complete, and resolves when idle', async (t) => {
  const { clock, runner, batcher, enqueue } = setup({ maxQueueDelayMs: 10, maxBatchSize: 2 });
  enqueue(1);
  enqueue(2); // full: runs at once
  const queued = enqueue(3); // waits for the delay
  t.equal(runner.calls.length, 1);
  t.equal(clock.pendingTimers, 0, 'no flush timer while every runner is busy');

  let closed = false;
  const closing = batcher.close().then(() => {
    closed = true;
  });
  t.equal(batcher.accepting, false);
  const refused = enqueue(4);
  await settle();
  t.equal(codeOf(refused.error), 'DRAINING');
  t.equal(closed, false);
  t.equal(queued.status, 'pending');

  runner.call(0).resolve(['r1', 'r2']);
  await settle();
  t.same(runner.call(1).items, [3], 'queued items run without waiting for the queue delay while draining');
  t.equal(closed, false, 'not idle while a batch runs');
  runner.call(1).resolve(['r3']);
  await closing;
  t.equal(queued.value?.result, 'r3');
  t.equal(clock.pendingTimers, 0, 'no timers left after close');
  await batcher.close(); // closing again resolves at once when idle
});

t.test('close on an idle batcher resolves at once', async (t) => {
  const { batcher } = setup();
  await batcher.close();
  t.equal(batcher.accepting, false);
});

t.test('destroy rejects queued items and lets in-flight batches finish', async (t) => {
  const { clock, runner, batcher, enqueue } = setup({ timeoutMs: 100 });
  const controller = new AbortController();
  const inFlight = enqueue(1);
  const queued = [enqueue(2, { signal: controller.signal }), enqueue(3)];
  batcher.destroy();
  await settle();
  t.ok(queued.every((r) => codeOf(r.error) === 'DRAINING'));
  t.equal(batcher.depth, 0);
  t.equal(getEventListeners(controller.signal, 'abort').length, 0, 'abort listeners removed');
  t.equal(clock.pendingTimers, 0, 'timeout timers cleared');
  const refused = track(batcher.enqueue(5));
  await settle();
  t.equal(codeOf(refused.error), 'DRAINING');

  let idle = false;
  const closing = batcher.close().then(() => {
    idle = true;
  });
  await settle();
  t.equal(idle, false, 'the in-flight batch is still running');
  runner.call(0).resolve(['r1']);
  await closing;
  t.equal(inFlight.value?.result, 'r1', 'the in-flight batch was not interrupted');
  t.equal(runner.calls.length, 1, 'nothing queued ever ran');

  const custom = setup();
  custom.enqueue(1);
  const q = custom.enqueue(2);
  const reason = new Error('runner crashed');
  custom.batcher.destroy(reason);
  await settle();
  t.equal(q.error, reason, 'destroy(err) rejects with the given error');
});

t.test('a runner blocked on a batch starts the next batch with every request preprocessed meanwhile', async (t) => {
  const { runner, batcher } = setup({ maxBatchSize: 8, maxQueueDelayMs: 0 });
  // A request: async preprocessing (here a promise the test resolves), then enqueue.
  const preprocessed = new Map<number, () => void>();
  const request = async (n: number) => {
    await new Promise<void>((resolve) => preprocessed.set(n, resolve));
    return batcher.enqueue(n * 10);
  };
  const first = track(batcher.enqueue(0));
  t.same(runner.call(0).items, [0]);

  const pending = [1, 2, 3].map((n) => {
    const p = request(n);
    p.catch(() => {});
    return p;
  });
  await settle();
  for (const n of [2, 1, 3]) preprocessed.get(n)?.();
  await settle();
  t.equal(batcher.depth, 3, 'all three enqueued while the runner is blocked');
  t.equal(runner.calls.length, 1);

  runner.call(0).resolve(['r0']);
  await Promise.resolve(); // one microtask turn: the batch's continuation
  await settle();
  t.equal(runner.calls.length, 2, 'the next batch starts as soon as the runner is released');
  t.same(runner.call(1).items, [20, 10, 30], 'with all of them, in arrival order');
  t.equal(batcher.depth, 0);
  runner.call(1).resolve(['r20', 'r10', 'r30']);
  const results = await Promise.all(pending);
  t.same(
    results.map((r) => [r.result, r.batchSize]),
    [
      ['r10', 3],
      ['r20', 3],
      ['r30', 3],
    ],
  );
  t.equal(first.value?.result, 'r0');
});

t.test('hooks report batch sizes, queue waits, durations, drops and depth', async (t) => {
  const starts: { size: number; queueWaitsMs: number[] }[] = [];
  const ends: { size: number; durationMs: number; error?: unknown }[] = [];
  const dropped: string[] = [];
  const depths: number[] = [];
  const { clock, runner, enqueue } = setup({
    maxBatchSize: 3,
    timeoutMs: 100,
    hooks: {
      onBatchStart: (i) => starts.push(i),
      onBatchEnd: (i) => ends.push(i),
      onDropped: (r) => dropped.push(r),
      onDepthChange: (d) => depths.push(d),
    },
  });
  enqueue(1);
  clock.advance(5);
  enqueue(2);
  clock.advance(5);
  enqueue(3, { timeoutMs: 7 });
  enqueue(4);
  const controller = new AbortController();
  enqueue(5, { signal: controller.signal });
  controller.abort();
  clock.advance(7); // item 3 expires
  clock.advance(3);
  runner.call(0).resolve(['r1']);
  await settle();
  clock.advance(4);
  runner.call(1).resolve(['r2', 'r4']);
  await settle();

  t.same(starts, [
    { size: 1, queueWaitsMs: [0] },
    { size: 2, queueWaitsMs: [15, 10] },
  ]);
  t.same(ends, [
    { size: 1, durationMs: 20 },
    { size: 2, durationMs: 4 },
  ]);
  t.same(dropped, ['aborted', 'timeout']);
  // 1 in, 1 out to run; 2, 3, 4, 5 in; 5 aborted; 3 expired; 2 and 4 out to run.
  t.same(depths, [1, 0, 1, 2, 3, 4, 3, 2, 0]);
});

t.test('depth counts queued items and running counts batches in flight', async (t) => {
  const { runner, batcher, enqueue } = setup({ concurrency: 2, maxBatchSize: 2 });
  t.equal(batcher.depth, 0);
  t.equal(batcher.running, 0);
  t.equal(batcher.accepting, true);
  enqueue(1);
  enqueue(2);
  t.equal(batcher.running, 2);
  t.equal(batcher.depth, 0, 'running items are not queued');
  enqueue(3);
  enqueue(4);
  enqueue(5);
  t.equal(batcher.depth, 3);
  runner.call(0).resolve(['r1']);
  await settle();
  t.equal(batcher.depth, 1);
  t.equal(batcher.running, 2);
});

t.test('invalid options are refused at construction', async (t) => {
  const base: BatcherOptions<number, number> = {
    name: 'm',
    maxBatchSize: 1,
    maxQueueDelayMs: 0,
    maxQueueSize: 1,
    timeoutMs: 0,
    concurrency: 1,
    runBatch: (items) => Promise.resolve(items),
  };
  t.throws(() => new Batcher({ ...base, maxBatchSize: 0 }), RangeError);
  t.throws(() => new Batcher({ ...base, concurrency: 0 }), RangeError);
  t.throws(() => new Batcher({ ...base, maxQueueSize: 0 }), RangeError);
  t.throws(() => new Batcher({ ...base, maxQueueDelayMs: -1 }), RangeError);
  t.throws(() => new Batcher({ ...base, timeoutMs: Number.NaN }), RangeError);
  t.doesNotThrow(() => new Batcher({ ...base, maxQueueSize: Infinity, timeoutMs: Infinity }));
});

t.test('the system clock is monotonic and its timers do not hold the process open', async (t) => {
  const a = systemClock.now();
  const b = systemClock.now();
  t.ok(b >= a);
  const handle = systemClock.setTimeout(() => {}, 60_000) as ReturnType<typeof setTimeout>;
  t.equal(handle.hasRef(), false);
  systemClock.clearTimeout(handle);
});

t.test('with the system clock a delayed batch flushes on its own', async (t) => {
  const batcher = new Batcher<number, number>({
    name: 'real',
    maxBatchSize: 4,
    maxQueueDelayMs: 5,
    maxQueueSize: 10,
    timeoutMs: 1000,
    concurrency: 1,
    runBatch: (items) => Promise.resolve(items.map((n) => n * 2)),
  });
  // The batcher's timers are unref()ed; a server's listening socket keeps the process alive, here this does.
  const keepAlive = setInterval(() => {}, 1000);
  t.teardown(() => clearInterval(keepAlive));
  const results = await Promise.all([batcher.enqueue(1), batcher.enqueue(2)]);
  t.same(
    results.map((r) => [r.result, r.batchSize]),
    [
      [2, 2],
      [4, 2],
    ],
  );
  t.ok((results[0]?.queueMs ?? 0) >= 4);
  await batcher.close();
});

t.test('setBatchLimit caps the batches formed after it; a running batch keeps its size', async (t) => {
  const { runner, batcher, enqueue } = setup({ maxBatchSize: 4 });
  t.equal(batcher.batchLimit, 4);
  const all = [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => enqueue(n));
  // 1 runs alone (the runner was idle); 2..5 form the next batch of 4 when it ends.
  runner.call(0).resolve(echo(runner.call(0).items));
  await settle();
  t.same(runner.call(1).items, [2, 3, 4, 5]);
  batcher.setBatchLimit(2);
  t.equal(batcher.batchLimit, 2);
  for (let i = 1; i < 4; i++) {
    runner.call(i).resolve(echo(runner.call(i).items));
    await settle();
  }
  t.same(
    runner.calls.map((c) => c.items),
    [[1], [2, 3, 4, 5], [6, 7], [8, 9]],
  );
  t.ok(all.every((r) => r.status === 'resolved'));
  t.throws(() => batcher.setBatchLimit(0), RangeError, 'a limit below 1 is refused');
  t.throws(() => batcher.setBatchLimit(1.5), RangeError, 'a fractional limit is refused');
  t.equal(batcher.batchLimit, 2, 'a refused limit leaves the last one');
});
