/**
 * Size buckets: a small fixed set of tensor sizes for a stage whose inputs vary in size (the OCR detector's
 * limit-round32 images, the recogniser's line crops). A batch runs at the smallest bucket that holds its largest
 * item, the items at the top-left and the rest of each slot padded (stage.ts), so the session sees at most
 * `widths.length * heights.length` spatial sizes whatever the photos.
 *
 * Why: onnxruntime's CUDA provider re-plans its cuDNN convolutions for every new input shape (seconds each on an
 * H200 for yolox-nano, docs/PERFORMANCE.md "GPU"); with buckets, warm-up can run every shape a session will see.
 */

/** The sizes a bucketed stage's tensors take: every pair of a width and a height, both ascending. */
export interface SizeBuckets {
  widths: readonly number[];
  heights: readonly number[];
}

export interface BucketSize {
  width: number;
  height: number;
}

/** Throws a RangeError naming `what` unless `sides` are positive integers in strictly ascending order. */
export function checkBucketSides(sides: readonly number[], what: string): void {
  if (sides.length === 0) throw new RangeError(`${what}: no bucket size`);
  sides.forEach((s, i) => {
    if (!Number.isInteger(s) || s < 1) throw new RangeError(`${what}: ${s} is not a positive integer`);
    if (i > 0 && s <= (sides[i - 1] as number)) throw new RangeError(`${what}: sizes must be ascending, ${s} follows ${sides[i - 1]}`);
  });
}

/** The smallest side in `sides` (ascending) that is at least `n`; undefined when n is larger than all. */
function smallestHolding(sides: readonly number[], n: number): number | undefined {
  for (const s of sides) if (s >= n) return s;
  return undefined;
}

/**
 * The bucket that holds a `width` x `height` item (or batch): the smallest width and the smallest height at least
 * as large. Undefined when the item is larger than the largest bucket on either side.
 */
export function bucketOf(buckets: SizeBuckets, width: number, height: number): BucketSize | undefined {
  const w = smallestHolding(buckets.widths, width);
  const h = smallestHolding(buckets.heights, height);
  return w === undefined || h === undefined ? undefined : { width: w, height: h };
}

/** Every bucket, smallest first (heights outer, widths inner). */
export function everyBucket(buckets: SizeBuckets): BucketSize[] {
  return buckets.heights.flatMap((height) => buckets.widths.map((width) => ({ width, height })));
}

export function bucketCount(buckets: SizeBuckets): number {
  return buckets.widths.length * buckets.heights.length;
}
