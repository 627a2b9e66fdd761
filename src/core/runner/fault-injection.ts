import type { Outputs } from '../types.js';

/**
 * Test hooks of the runner, reachable from code only (nothing in configuration or requests sets them): a run that
 * fails or ends its worker thread, and a worker held inside a call as in a long native session.run. The pool's own
 * type (SessionPool) does not carry them; tests reach them through `testHooksOf(pool)`.
 */

/** Injected faults: 'throw' fails one run as a session error would; 'exit' ends the thread mid-run. */
export type WorkerFault = 'throw' | 'exit';

/** Exit code of a worker ended by the `crash` test hook. */
export const CRASH_EXIT_CODE = 70;

/** One instance blocked inside a call, as in a long native session.run. */
export interface PoolHold {
  /** Resolves once the worker is blocked. */
  entered: Promise<void>;
  /** Settles when the held call answers (after release) or rejects (after crash). */
  done: Promise<void>;
  /** Lets the worker answer. */
  release(): void;
  /** Ends the worker thread while it is inside the call. */
  crash(): void;
}

export interface PoolTestHooks {
  hold(): PoolHold;
  /** The next run dispatched to a worker fails as if session.run threw ('throw'), or its thread ends in it ('exit'). */
  injectFault(kind: WorkerFault): void;
}

/** The hooks travel on the pool itself, under a symbol no JSON or spread copies: they go with the pool. */
const TEST_HOOKS = Symbol('ocular.poolTestHooks');

export function attachTestHooks(pool: object, hooks: PoolTestHooks): void {
  Object.defineProperty(pool, TEST_HOOKS, { value: hooks, enumerable: false });
}

/** The test hooks of a pool made by createSessionPool. */
export function testHooksOf(pool: object): PoolTestHooks {
  const hooks = (pool as { [TEST_HOOKS]?: PoolTestHooks })[TEST_HOOKS];
  if (hooks === undefined) throw new TypeError('not a session pool made by createSessionPool');
  return hooks;
}

/**
 * Pool side of a hold: `submit` queues a `hold` request with the shared flag and calls `onHeld` once the worker is
 * blocked; storing 1 in the flag lets it answer, 2 ends its thread.
 */
export function createHold(submit: (flag: SharedArrayBuffer, onHeld: () => void) => Promise<Outputs>): PoolHold {
  const flag = new Int32Array(new SharedArrayBuffer(4));
  let entered!: () => void;
  let failed!: (err: Error) => void;
  const enteredPromise = new Promise<void>((resolve, reject) => {
    entered = resolve;
    failed = reject;
  });
  const done = submit(flag.buffer as SharedArrayBuffer, () => entered()).then(
    () => undefined,
    (err: Error) => {
      failed(err);
      throw err;
    },
  );
  // Callers may await only one of the two; neither should surface as an unhandled rejection.
  enteredPromise.catch(() => {});
  done.catch(() => {});
  const wake = (value: number): void => {
    Atomics.store(flag, 0, value);
    Atomics.notify(flag, 0);
  };
  return { entered: enteredPromise, done, release: () => wake(1), crash: () => wake(2) };
}

/**
 * Worker side of a hold: blocks this thread the way a long native session.run does, until the parent stores a
 * value in the flag. Returns what it asked for.
 */
export function waitForRelease(flag: SharedArrayBuffer): 'release' | 'crash' {
  const view = new Int32Array(flag);
  Atomics.wait(view, 0, 0);
  return Atomics.load(view, 0) === 2 ? 'crash' : 'release';
}
