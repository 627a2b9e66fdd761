/**
 * How long this process's event loop is blocked while something runs: for hardening tests whose server runs in
 * the test process (an app listening on port 0), so a block in the server is a block here.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';

/** The event loop bound the hardening tests hold the server to (issue 18). */
export const MAX_LOOP_BLOCK_MS = 100;

/** Runs `work` and reports the longest event-loop delay seen meanwhile, in milliseconds. */
export async function measureLoopBlock<T>(work: () => Promise<T>): Promise<{ value: T; maxBlockMs: number }> {
  const histogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  try {
    const value = await work();
    // One more turn, so that a block at the very end is sampled too.
    await new Promise((resolve) => setTimeout(resolve, 20));
    return { value, maxBlockMs: histogram.max / 1e6 };
  } finally {
    histogram.disable();
  }
}
