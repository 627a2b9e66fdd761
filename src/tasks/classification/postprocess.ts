/**
 * Classification postprocessing: scores of one image -> the top-k labels.
 *
 * Pure and allocation-light: the softmax is never materialised. It is monotonic, so the top-k is chosen on the
 * raw scores and only those k are normalised (one pass for the max, one for the sum of exponentials).
 */

export type SoftmaxMode = 'auto' | 'always' | 'never';

export interface ClassifyOptions {
  /** How many classes to return; clipped to the number of classes. */
  topK: number;
  /**
   * 'auto' applies softmax unless the row already is a probability distribution (see
   * `isProbabilityDistribution`). Multi-label heads (independent sigmoids, which need not sum to 1) must use
   * 'never', or 'auto' would renormalise them.
   */
  softmax: SoftmaxMode;
}

export interface Classification {
  label: string;
  /** Class index = position in the output row. */
  index: number;
  score: number;
}

/** How far the sum of a row may be from 1 for 'auto' to take it as probabilities already. */
export const PROBABILITY_SUM_TOLERANCE = 1e-3;

/** True when every value lies in [0, 1] and the values sum to 1 within `tolerance`. NaN makes it false. */
export function isProbabilityDistribution(row: Float32Array, tolerance = PROBABILITY_SUM_TOLERANCE): boolean {
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    const v = row[i] as number;
    // Written so that NaN fails the test.
    if (!(v >= 0 && v <= 1)) return false;
    sum += v;
  }
  return Math.abs(sum - 1) <= tolerance;
}

/** Numerically stable softmax (max subtracted, float64 accumulation), into a new array. */
export function softmax(row: Float32Array): Float32Array {
  const { max, sum } = softmaxTerms(row);
  const out = new Float32Array(row.length);
  for (let i = 0; i < row.length; i++) out[i] = Math.exp((row[i] as number) - max) / sum;
  return out;
}

function softmaxTerms(row: Float32Array): { max: number; sum: number } {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) {
    const v = row[i] as number;
    if (v > max) max = v;
  }
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp((row[i] as number) - max);
  return { max, sum };
}

/**
 * Indices of the k highest values, best first; equal values rank by lower index. NaN ranks below everything.
 * Insertion into a sorted buffer of k: O(n·k), which beats a full sort for the small k that clients ask for.
 */
export function topKIndices(row: Float32Array, k: number): number[] {
  const n = Math.min(Math.max(0, Math.floor(k)), row.length);
  if (n === 0) return [];
  const idx = new Int32Array(n);
  const val = new Float64Array(n);
  let filled = 0;
  for (let i = 0; i < row.length; i++) {
    const raw = row[i] as number;
    const v = Number.isNaN(raw) ? -Infinity : raw;
    // Strict '>' keeps the earlier (lower) index ahead on ties; a full buffer only admits a strictly better value.
    if (filled === n && !(v > (val[n - 1] as number))) continue;
    let j = filled < n ? filled++ : n - 1;
    while (j > 0 && v > (val[j - 1] as number)) {
      val[j] = val[j - 1] as number;
      idx[j] = idx[j - 1] as number;
      j--;
    }
    val[j] = v;
    idx[j] = i;
  }
  return Array.from(idx.subarray(0, filled));
}

/**
 * Top-k classes of one image's scores. `labels[i]` names class i; a class without a label is named by its
 * index (the registry checks label count against the output at load time, so this is a fallback only).
 */
export function classify(row: Float32Array, labels: readonly string[], opts: ClassifyOptions): Classification[] {
  const apply = opts.softmax === 'always' || (opts.softmax === 'auto' && !isProbabilityDistribution(row));
  const top = topKIndices(row, opts.topK);
  const terms = apply ? softmaxTerms(row) : undefined;
  return top.map((index) => {
    const raw = row[index] as number;
    const score = terms === undefined ? raw : Math.exp(raw - terms.max) / terms.sum;
    return { label: labels[index] ?? String(index), index, score };
  });
}
