/**
 * Two onnxruntime sessions timed against each other in one process: each runs the same feeds `runs` times, in
 * alternating order (A B, B A, ...) after one untimed run each, so that a neighbour's load and the caches hit both
 * alike. Returns each one's median run time in ms. Used by scripts/hardening/arena.ts and scripts/region-mask-bench.ts.
 */
import type { InferenceSession } from 'onnxruntime-common';
import { spread } from './stats.js';

export async function abRuns(
  a: InferenceSession,
  b: InferenceSession,
  feedsOf: (s: InferenceSession) => InferenceSession.FeedsType,
  runs: number,
): Promise<{ a: number; b: number }> {
  const times = { a: [] as number[], b: [] as number[] };
  const sessions = { a, b };
  const once = async (k: 'a' | 'b', keep: boolean) => {
    const feeds = feedsOf(sessions[k]);
    const t0 = performance.now();
    await sessions[k].run(feeds);
    if (keep) times[k].push(performance.now() - t0);
  };
  await once('a', false);
  await once('b', false);
  for (let r = 0; r < runs; r++) {
    for (const k of r % 2 === 0 ? (['a', 'b'] as const) : (['b', 'a'] as const)) await once(k, true);
  }
  return { a: spread(times.a).median, b: spread(times.b).median };
}
