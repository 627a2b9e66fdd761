/**
 * Decoding for SSD-style heads whose anchor decode is inside the graph (UltraFace): per anchor a softmax score
 * row `[background, class_1 … class_{C-1}]` and a box `[x1, y1, x2, y2]` normalised to 0–1 of the input tensor.
 */
import type { ImageTransform } from '../../core/types.js';
import { boxToOriginal, classMask, nms } from './nms.js';
import type { Detection, DetectionFilter } from './nms.js';

export interface SsdOptions {
  /** Model input (tensor) size in pixels: the normalised boxes are fractions of it. */
  inputWidth: number;
  inputHeight: number;
}

/**
 * Decodes one image: `scores` is [anchors, C] and `boxes` is [anchors, 4] (subarrays of a batch output are
 * fine; both are only read). Column 0 is background and never yields a detection; a detection's `index` is its
 * score column, so `labels` is the model's label file including background (UltraFace: background, face).
 * Boxes go from normalised tensor coordinates to tensor pixels, then through the inverse of `transform` to
 * original-image pixels, clipped to the image; with a stretch resize this is x·originalWidth, y·originalHeight.
 */
export function decodeSsd(
  scores: Float32Array,
  boxes: Float32Array,
  anchors: number,
  numClasses: number,
  opts: SsdOptions,
  transform: ImageTransform,
  filter: DetectionFilter,
  labels: readonly string[],
): Detection[] {
  if (numClasses < 2) throw new RangeError(`SSD scores have ${numClasses} columns, need background + a class`);
  if (scores.length < anchors * numClasses) {
    throw new RangeError(`SSD scores hold ${scores.length} values, need ${anchors}x${numClasses}`);
  }
  if (boxes.length < anchors * 4) throw new RangeError(`SSD boxes hold ${boxes.length} values, need ${anchors}x4`);

  const threshold = filter.scoreThreshold;
  const allowed = classMask(numClasses, filter.classes);
  const { inputWidth: w, inputHeight: h } = opts;
  const candidates: Detection[] = [];
  for (let a = 0, sBase = 0; a < anchors; a++, sBase += numClasses) {
    let box: Detection['box'] | undefined;
    for (let c = 1; c < numClasses; c++) {
      if (allowed !== undefined && allowed[c] === 0) continue;
      const score = scores[sBase + c] as number;
      if (!(score >= threshold)) continue;
      if (box === undefined) {
        const b = a * 4;
        box = boxToOriginal(
          (boxes[b] as number) * w,
          (boxes[b + 1] as number) * h,
          (boxes[b + 2] as number) * w,
          (boxes[b + 3] as number) * h,
          transform,
        );
        if (box === undefined) break;
      }
      candidates.push({ label: labels[c] ?? String(c), index: c, score, box });
    }
  }
  return nms(candidates, filter);
}
