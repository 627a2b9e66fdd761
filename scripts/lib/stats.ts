/** Small statistics helpers for the load test and the benchmark. Latencies are milliseconds. */

export interface LatencySummary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] as number;
}

export function summarize(samples: readonly number[] | Float64Array): LatencySummary {
  const sorted = Float64Array.from(samples).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    mean: sorted.length > 0 ? sum / sorted.length : NaN,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length > 0 ? (sorted[sorted.length - 1] as number) : NaN,
  };
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  n: number;
}

/** Median (mean of the middle two for an even count), min and max of repeated measurements. */
export function spread(values: readonly number[]): Spread {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 };
  const mid = v.length >> 1;
  const median = v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
  return { median, min: v[0] as number, max: v[v.length - 1] as number, n: v.length };
}

export const fmt = (v: number, digits = 1): string => (Number.isFinite(v) ? v.toFixed(digits) : 'n/a');

export function fmtSpread(s: Spread, digits = 1): string {
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

/**
 * The order of `n` contenders in round `round` (0-based), from a Williams design: over one full cycle (n rounds
 * for an even n, 2n for an odd one) every contender runs at every position equally often and runs right after
 * every other equally often, so neither a slot in the round nor the contender just before (a process still
 * collecting its garbage, caches it left cold) favours anyone. A plain rotation balances the positions only: of
 * three contenders A, B, C rotated (ABC, BCA, CAB), B runs right after A wherever the two are adjacent, never before.
 */
export function balancedOrder(n: number, round: number): number[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`balancedOrder: n must be a positive integer, got ${n}`);
  if (!Number.isInteger(round) || round < 0) throw new RangeError(`balancedOrder: round must be an integer >= 0, got ${round}`);
  // The first row: 0, 1, n-1, 2, n-2, ...; row r adds r to each (mod n). An odd n also needs the rows reversed.
  const first = Array.from({ length: n }, (_, j) => (j === 0 ? 0 : j % 2 === 1 ? (j + 1) / 2 : n - j / 2));
  const r = round % (n % 2 === 0 ? n : 2 * n);
  const row = first.map((x) => (x + (r % n)) % n);
  return r < n ? row : row.reverse();
}
