/**
 * Batch-size tuning at warm-up: time one batch at each candidate size and cap dynamic batching at the smallest
 * size whose cost per image is within a tolerance of the cheapest (5 %; 15 % on the CPU provider, see
 * CPU_TOLERANCE).
 *
 * Why: a larger batch is not always cheaper per image. On a GPU it nearly always is (one kernel launch for many
 * images); on the CPU provider it often is not (docs/PERFORMANCE.md). Batching past the cheapest size then costs
 * throughput and adds latency. The manifest's maxBatchSize stays the upper bound; the
 * tuned limit is reported in /v1/models and in the logs.
 *
 * Measurement: every size is run once untimed (onnxruntime allocates per shape on the first run), then timed in
 * `repeats` rounds over all sizes (default 3); each size keeps its fastest run, the figure least disturbed by other
 * work on the machine.
 */

export type BatchTuningMode = 'cpu' | 'always' | 'off';
export type BatchPaddingMode = 'gpu' | 'always' | 'off';

export interface BatchSizeTiming {
  size: number;
  /** Fastest timed run of one batch of this size, divided by the size. */
  perImageMs: number;
}

export interface BatchTuning {
  /** Cheapest per image within this fraction is good enough; the smallest such size wins (less latency). */
  tolerance: number;
  timings: BatchSizeTiming[];
  /** The batch limit chosen: never above the configured maxBatchSize. */
  chosen: number;
}

export const DEFAULT_TOLERANCE = 0.05;

/**
 * On the CPU provider a larger batch must be more than 15 % cheaper per image at warm-up to be chosen. Warm-up times
 * the model alone on idle cores; in service the same cores decode images at the same time, and there a larger
 * batch loses more than the warm-up shows (docs/PERFORMANCE.md).
 */
export const CPU_TOLERANCE = 0.15;

/** The tolerance tuning uses on `provider`. */
export function toleranceFor(provider: string): number {
  return provider === 'cpu' ? CPU_TOLERANCE : DEFAULT_TOLERANCE;
}

/** 1, 2, 4, ... below max, then max itself: at most log2(max) + 2 sizes. */
export function candidateSizes(max: number): number[] {
  if (!(Number.isInteger(max) && max >= 1)) throw new RangeError(`max batch size must be an integer >= 1, got ${max}`);
  const sizes: number[] = [];
  for (let size = 1; size < max; size *= 2) sizes.push(size);
  sizes.push(max);
  return sizes;
}

/** The smallest size whose per-image time is within `tolerance` of the cheapest; throws on no usable timing. */
export function chooseBatchSize(timings: readonly BatchSizeTiming[], tolerance = DEFAULT_TOLERANCE): number {
  const usable = timings.filter((t) => Number.isFinite(t.perImageMs) && t.perImageMs >= 0);
  if (usable.length === 0) throw new RangeError('no batch size timing to choose from');
  const best = Math.min(...usable.map((t) => t.perImageMs));
  const good = usable.filter((t) => t.perImageMs <= best * (1 + tolerance));
  return Math.min(...good.map((t) => t.size));
}

export interface TuneOptions {
  maxBatchSize: number;
  /** Runs one batch of n images and resolves when it is done. */
  runBatch(n: number): Promise<void>;
  /** Sizes already run once (the warm-up's 1 and max): their untimed first run is skipped. */
  warmed?: readonly number[];
  repeats?: number;
  tolerance?: number;
  now?: () => number;
}

export async function tuneBatchSize(opts: TuneOptions): Promise<BatchTuning> {
  const repeats = opts.repeats ?? 3;
  if (!(Number.isInteger(repeats) && repeats >= 1)) throw new RangeError(`repeats must be an integer >= 1, got ${repeats}`);
  const tolerance = opts.tolerance ?? DEFAULT_TOLERANCE;
  const now = opts.now ?? (() => performance.now());
  const warmed = new Set(opts.warmed ?? []);
  const sizes = candidateSizes(opts.maxBatchSize);
  for (const size of sizes) if (!warmed.has(size)) await opts.runBatch(size);
  // Rounds over every size, so that a slow spell of the machine (another process, a frequency change) touches
  // all sizes alike instead of all the repeats of one.
  const fastest = new Map(sizes.map((size) => [size, Infinity]));
  for (let round = 0; round < repeats; round++) {
    for (const size of sizes) {
      const started = now();
      await opts.runBatch(size);
      fastest.set(size, Math.min(fastest.get(size) ?? Infinity, now() - started));
    }
  }
  const timings = sizes.map((size) => ({ size, perImageMs: (fastest.get(size) ?? Infinity) / size }));
  return { tolerance, timings, chosen: chooseBatchSize(timings, tolerance) };
}

/**
 * Whether a stage pads every batch to its batch limit (manifest `batching.padBatches`). 'gpu' pads where the session
 * runs mostly on a GPU provider (runsMostlyOnGpu): there a new input shape costs a rebuild (onnxruntime's CUDA
 * provider re-plans its cuDNN convolutions whenever the input dims change) and padding rows cost little, while on
 * the CPU every padding row costs its full share of compute.
 */
export function shouldPadBatches(
  mode: BatchPaddingMode,
  provider: string,
  nodeCounts: Readonly<Record<string, number>>,
  maxBatchSize: number,
): boolean {
  if (maxBatchSize <= 1 || mode === 'off') return false;
  return mode === 'always' || runsMostlyOnGpu(provider, nodeCounts);
}

/**
 * Whether a stage of varying input sizes runs its batches at size buckets (an OCR model's `shapeBuckets`), by the
 * same rule as padBatches: 'gpu' where the session runs mostly on a GPU provider, 'always', 'off'.
 */
export function shouldBucket(mode: BatchPaddingMode, provider: string, nodeCounts: Readonly<Record<string, number>>): boolean {
  if (mode === 'off') return false;
  return mode === 'always' || runsMostlyOnGpu(provider, nodeCounts);
}

/**
 * A session on a GPU provider with at least half of its nodes there. One that put most of its nodes on the CPU (an
 * int8 model's quantized operators under CUDA) counts as CPU. Node counts may be empty (profiling failed): then the
 * provider decides.
 */
export function runsMostlyOnGpu(provider: string, nodeCounts: Readonly<Record<string, number>>): boolean {
  if (provider === 'cpu') return false;
  let cpu = 0;
  let total = 0;
  for (const [ep, n] of Object.entries(nodeCounts)) {
    total += n;
    if (ep === 'CPUExecutionProvider') cpu += n;
  }
  return total === 0 || cpu * 2 <= total;
}

/** Whether a stage on `provider` is tuned under `mode`. */
export function shouldTune(mode: BatchTuningMode, provider: string, maxBatchSize: number): boolean {
  if (maxBatchSize <= 1 || mode === 'off') return false;
  return mode === 'always' || provider === 'cpu';
}
