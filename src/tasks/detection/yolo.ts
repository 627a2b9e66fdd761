/**
 * Decoding for the YOLO heads whose grid decode is inside the graph: one row (or column) per anchor with the box
 * as centre x, centre y, width, height in input (tensor) pixels, then the class scores, already sigmoid-ed.
 *   Ultralytics (YOLOv8, YOLO11, YOLOv9): `[4 + C, A]` as exported ('channels-first'), or `[A, 4 + C]`; no objectness.
 *   YOLOv5 / YOLOv7: `[A, 5 + C]` with an objectness column before the classes; score_c = obj · cls_c.
 * As for YOLOX (yolox.ts), every class of an anchor whose score passes the threshold is a candidate (Ultralytics'
 * `multi_label=True`), and NMS then runs per class unless the model asks for class-agnostic suppression.
 */
import type { ImageTransform } from '../../core/types.js';
import { boxToOriginal, classMask, nms } from './nms.js';
import type { Detection, DetectionFilter } from './nms.js';

export interface DenseHead {
  /** Anchor points (A). */
  anchors: number;
  /** Class score columns (C). */
  numClasses: number;
  /** An objectness value after the box (YOLOv5 / YOLOv7). */
  objectness: boolean;
  /** Values of one anchor are A apart (`[4 + C, A]`) rather than adjacent (`[A, 4 + C]`). */
  channelsFirst: boolean;
}

/**
 * Decodes one image. `data` holds at least A·(4 [+1] + C) values (a subarray of a batch output is fine; it is only
 * read). Boxes go through the inverse of `transform` to original-image pixels, clipped; `labels[c]` names class c.
 */
export function decodeDense(
  data: Float32Array,
  head: DenseHead,
  transform: ImageTransform,
  filter: DetectionFilter,
  labels: readonly string[],
): Detection[] {
  const { anchors, numClasses, objectness, channelsFirst } = head;
  const first = objectness ? 5 : 4;
  const width = first + numClasses;
  if (numClasses < 1) throw new RangeError(`the output has no class column (${width} values per anchor)`);
  if (data.length < anchors * width) {
    throw new RangeError(`the output holds ${data.length} values, need ${anchors}x${width}`);
  }
  // Where value j of anchor a lies: a·anchorStep + j·valueStep.
  const anchorStep = channelsFirst ? 1 : width;
  const valueStep = channelsFirst ? anchors : 1;
  const threshold = filter.scoreThreshold;
  const allowed = classMask(numClasses, filter.classes);
  const candidates: Detection[] = [];
  for (let a = 0; a < anchors; a++) {
    const base = a * anchorStep;
    const obj = objectness ? (data[base + 4 * valueStep] as number) : 1;
    // cls <= 1, so score = obj·cls <= obj: an anchor whose obj misses the threshold has no candidate (NaN neither).
    if (!(obj >= threshold)) continue;
    let box: Detection['box'] | undefined;
    for (let c = 0; c < numClasses; c++) {
      if (allowed !== undefined && allowed[c] === 0) continue;
      const cls = data[base + (first + c) * valueStep] as number;
      const score = objectness ? obj * cls : cls;
      if (!(score >= threshold)) continue;
      if (box === undefined) {
        const cx = data[base] as number;
        const cy = data[base + valueStep] as number;
        const hw = (data[base + 2 * valueStep] as number) / 2;
        const hh = (data[base + 3 * valueStep] as number) / 2;
        box = boxToOriginal(cx - hw, cy - hh, cx + hw, cy + hh, transform);
        // Entirely in the letterbox padding (or degenerate): no class of this anchor can be kept.
        if (box === undefined) break;
      }
      candidates.push({ label: labels[c] ?? String(c), index: c, score, box });
    }
  }
  return nms(candidates, filter);
}
