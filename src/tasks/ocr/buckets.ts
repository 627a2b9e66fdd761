/**
 * The OCR stages' size buckets (manifest `shapeBuckets`; core/size-buckets.ts says what a bucket is): the detector's
 * from its resize and limit, the recogniser's from its widest crop. Pure functions of the manifest entry, checked at
 * startup, so that every image and every crop fits the largest bucket and a session's shapes stay bounded.
 */
import type { InputSpec } from '../../config/input-spec.js';
import type { OcrEntry } from '../../config/manifest.js';
import { ModelCheckError } from '../../core/model-check.js';
import { limitRound32Size, pythonRound } from '../../core/preprocess/resize-plan.js';
import type { SizeBuckets } from '../../core/size-buckets.js';
import { RECOGNIZER_DEFAULTS } from './crop.js';

/**
 * The detector's buckets, or undefined where its sizes have no upper bound (limit-round32 with limitType 'min',
 * which scales the short side up to the limit and leaves the long side unbounded). A stretch detector has one size:
 * one bucket, which bounds its shapes the same way (and lets its batches pad on a GPU).
 */
export function detectorBuckets(entry: OcrEntry): SizeBuckets | undefined {
  const spec = entry.detector.input;
  const resize = spec.resize;
  const given = entry.shapeBuckets.detectorSides;
  if (resize.mode === 'stretch') {
    if (given !== undefined) throw new ModelCheckError(entry.name, 'shapeBuckets.detectorSides', 'a stretch detector has one size: give no sides');
    return { widths: [spec.width], heights: [spec.height] };
  }
  if (resize.mode !== 'limit-round32') return undefined;
  if (resize.limitType === 'min') {
    if (given !== undefined) {
      throw new ModelCheckError(entry.name, 'shapeBuckets.detectorSides', "needs detector.input.resize.limitType 'max' (with 'min' sizes have no upper bound)");
    }
    return undefined;
  }
  const limit = resize.limitSideLen;
  // The largest side limit-round32 gives: the long side is cut to the limit (or was below it), then rounded.
  const largest = Math.max(32, pythonRound(limit / 32) * 32);
  const sides = given ?? defaultDetectorSides(limit);
  const last = sides[sides.length - 1] as number;
  if (last < largest) {
    throw new ModelCheckError(entry.name, 'shapeBuckets.detectorSides', `the largest side (${last}) must hold ${largest}, the largest side limitSideLen ${limit} gives`);
  }
  return { widths: sides, heights: sides };
}

/** The sides a 16:9, a 4:3 and a square photo larger than the limit get, ascending and distinct. */
export function defaultDetectorSides(limitSideLen: number): number[] {
  const sides = [
    limitRound32Size(16 * limitSideLen, 9 * limitSideLen, limitSideLen, 'max'),
    limitRound32Size(4 * limitSideLen, 3 * limitSideLen, limitSideLen, 'max'),
  ].flatMap((s) => [s.width, s.height]);
  return [...new Set(sides)].sort((a, b) => a - b);
}

/** The recogniser's buckets: its widths, at its one line height. */
export function recognizerBuckets(entry: OcrEntry): SizeBuckets {
  const spec: InputSpec = entry.recognizer.input;
  const widths = entry.shapeBuckets.recognizerWidths ?? defaultRecognizerWidths(spec.width, minRecognizerWidth(spec));
  const last = widths[widths.length - 1] as number;
  const min = minRecognizerWidth(spec);
  if ((widths[0] as number) < min) {
    throw new ModelCheckError(entry.name, 'shapeBuckets.recognizerWidths', `${widths[0]} is never used: every batch is at least ${min} wide`);
  }
  if (last < spec.width) {
    throw new ModelCheckError(entry.name, 'shapeBuckets.recognizerWidths', `the largest width (${last}) must be at least recognizer.input.width (${spec.width}), the widest crop`);
  }
  return { widths, heights: [spec.height] };
}

/**
 * The narrowest recogniser batch: PaddleOCR pads every batch to at least 320 (its rec_image_shape), or the widest
 * crop where that is narrower. Readings depend on the padding (the recogniser's attention spans the whole width:
 * measured, a space in "NO PARKING" comes and goes with 32 px more or less of it), so every batch up to 320 wide,
 * bucketed or not, runs at exactly this width and reads the same.
 */
export function minRecognizerWidth(spec: InputSpec): number {
  return Math.min(RECOGNIZER_DEFAULTS.minBatchWidth, spec.width);
}

/**
 * The narrowest batch width, then 1/2, 2/3 and all of the widest crop where wider, rounded up to multiples of 8
 * (the recogniser's stride): [320, 480, 640, 960] for 960.
 */
export function defaultRecognizerWidths(maxWidth: number, minWidth: number): number[] {
  const widths = [1 / 2, 2 / 3].map((f) => Math.ceil((maxWidth * f) / 8) * 8).filter((w) => w > minWidth && w < maxWidth);
  return [...new Set([minWidth, ...widths, maxWidth])].sort((a, b) => a - b);
}
