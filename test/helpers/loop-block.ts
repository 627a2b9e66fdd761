/**
 * How long the server's event loop is blocked while something runs: for hardening tests whose server runs in the
 * test process (an app listening on port 0), so a block in the server is a block here.
 *
 * A 5 ms timer ticks on the main thread. A gap between two ticks is the loop not turning, but on a shared 2-core
 * runner the gap also holds time the kernel gave the CPUs to other processes: a descheduled process shows 100 ms
 * gaps with no work of its own behind them. So a gap counts as a block only for the part of it the main thread spent
 * running, read from the kernel's own run-time count for that thread (`/proc/self/task/<pid>/schedstat`, ns). Work
 * done synchronously on the loop (a parse, a sort, a copy, a garbage collection pause) runs on the main thread and
 * counts in full; worker threads and other processes are other tasks and do not count. A synchronous wait off the
 * CPU would not count either: the server has none on its main thread (its one `Atomics.wait`, the device lock, is
 * for worker threads). Where that file is missing (not Linux) the wall-clock gap is the block.
 */
import { readFileSync } from 'node:fs';

/** The event loop bound the hardening tests hold the server to (issue 18). */
export const MAX_LOOP_BLOCK_MS = 100;

const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`;

/** The main thread's run time so far in ms, or undefined where the kernel does not say. */
function mainThreadRunMs(): number | undefined {
  try {
    return Number(readFileSync(SCHEDSTAT, 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return undefined;
  }
}

export interface LoopBlock {
  /** Timer ticks seen: at least one, or nothing was measured. */
  samples: number;
  /** The longest the main thread ran between two ticks (the wall-clock gap where run time is unknown), in ms. */
  maxBlockMs: number;
  /** The longest wall-clock gap between two ticks, beyond the 5 ms period, in ms: for the report only. */
  maxGapMs: number;
}

/** Starts measuring now; `stop()` ends it and says the longest block. */
export function loopBlockProbe(): { stop(): LoopBlock } {
  const PERIOD_MS = 5;
  let lastWall = performance.now();
  let lastRun = mainThreadRunMs();
  let samples = 0;
  let maxBlockMs = 0;
  let maxGapMs = 0;
  const tick = (): void => {
    const wall = performance.now();
    const run = mainThreadRunMs();
    const gap = Math.max(0, wall - lastWall - PERIOD_MS);
    maxGapMs = Math.max(maxGapMs, gap);
    maxBlockMs = Math.max(maxBlockMs, run === undefined || lastRun === undefined ? gap : Math.min(gap, run - lastRun));
    lastWall = wall;
    lastRun = run;
  };
  const timer = setInterval(() => {
    tick();
    samples++;
  }, PERIOD_MS);
  return {
    stop() {
      clearInterval(timer);
      tick();
      return { samples, maxBlockMs, maxGapMs };
    },
  };
}

/** Runs `work` and reports the longest event-loop block seen meanwhile. */
export async function measureLoopBlock<T>(work: () => Promise<T>): Promise<LoopBlock & { value: T }> {
  const probe = loopBlockProbe();
  let value: T;
  try {
    value = await work();
    // One more turn, so that a block at the very end is sampled too.
    await new Promise((resolve) => setTimeout(resolve, 20));
  } catch (error) {
    probe.stop();
    throw error;
  }
  return { value, ...probe.stop() };
}

/** A report for a test's message: the block, and the wall-clock gap where the two differ. */
export function describeBlock({ maxBlockMs, maxGapMs }: LoopBlock): string {
  return maxGapMs - maxBlockMs >= 1 ? `${maxBlockMs.toFixed(1)} ms (longest gap ${maxGapMs.toFixed(1)} ms, the rest not on a CPU)` : `${maxBlockMs.toFixed(1)} ms`;
}
