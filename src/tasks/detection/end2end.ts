/**
 * Decoding for end-to-end detectors, whose graph ends in its own NMS (or needs none): a fixed number K of rows per
 * image, the kept detections first and then padding.
 *   `[K, 6]` rows x1, y1, x2, y2, score, class in input pixels: YOLOv10, Ultralytics exports with `nms=True`.
 *   One output each for boxes `[K, 4]`, scores `[K]`, classes `[K]` and optionally the count of real rows:
 *   TensorFlow's object detection exports (yxyx boxes normalised 0..1, classes from 1) and torchvision's (xyxy in
 *   pixels, classes from 0).
 * A row is padding, and skipped, where it lies past the count, where its class is not an integer naming a label,
 * or where its box is empty (zero rows are). No second NMS unless the manifest asks for it.
 */
import type { ImageTransform } from '../../core/types.js';
import { boxToOriginal, classMask, finishDetections } from './nms.js';
import type { Box, Detection, DetectionFilter } from './nms.js';

export interface BoxReading {
  /** Corner order of the four box values. */
  boxFormat: 'xyxy' | 'yxyx';
  /** Boxes as fractions of the input's width and height rather than pixels. */
  normalized: boolean;
  /** Model input (tensor) size in pixels. */
  inputWidth: number;
  inputHeight: number;
}

export interface End2endOptions {
  numClasses: number;
  /** Subtracted from the model's class before it indexes the labels. */
  classOffset: number;
  /** Run Ocular's NMS on the rows as well (the graph's own is usually enough). */
  nms: boolean;
}

/** Reads box `k` of `boxes` (4 values per row) into original-image pixels; undefined for padding. */
function readBox(boxes: Float32Array, k: number, r: BoxReading, transform: ImageTransform): Box | undefined {
  const b = k * 4;
  let x1 = boxes[b] as number;
  let y1 = boxes[b + 1] as number;
  let x2 = boxes[b + 2] as number;
  let y2 = boxes[b + 3] as number;
  if (r.boxFormat === 'yxyx') [x1, y1, x2, y2] = [y1, x1, y2, x2];
  if (r.normalized) {
    x1 *= r.inputWidth;
    x2 *= r.inputWidth;
    y1 *= r.inputHeight;
    y2 *= r.inputHeight;
  }
  return boxToOriginal(x1, y1, x2, y2, transform);
}

/**
 * Decodes one image's rows. `boxes` holds 4 values per row, `scores` and `classes` one; `rows` is K, or the model's
 * count where it gives one (clamped to K). Classes are float32 (an int64 class travels as its float value).
 */
export function decodeRows(
  boxes: Float32Array,
  scores: Float32Array,
  classes: Float32Array,
  rows: number,
  reading: BoxReading,
  opts: End2endOptions,
  transform: ImageTransform,
  filter: DetectionFilter,
  labels: readonly string[],
): Detection[] {
  const k = Math.min(rows, Math.floor(boxes.length / 4), scores.length, classes.length);
  const threshold = filter.scoreThreshold;
  const allowed = classMask(opts.numClasses, filter.classes);
  const candidates: Detection[] = [];
  for (let i = 0; i < k; i++) {
    const score = scores[i] as number;
    if (!(score >= threshold)) continue;
    const c = (classes[i] as number) - opts.classOffset;
    if (!Number.isInteger(c) || c < 0 || c >= opts.numClasses) continue;
    if (allowed !== undefined && allowed[c] === 0) continue;
    const box = readBox(boxes, i, reading, transform);
    if (box === undefined) continue;
    candidates.push({ label: labels[c] ?? String(c), index: c, score, box });
  }
  return finishDetections(candidates, filter, opts.nms);
}

/**
 * Decodes one image's `[K, 6]` output (x1, y1, x2, y2, score, class in input pixels): the columns are split out and
 * read as `decodeRows` reads separate outputs.
 */
export function decodeEnd2end(
  data: Float32Array,
  inputWidth: number,
  inputHeight: number,
  opts: Omit<End2endOptions, 'classOffset'>,
  transform: ImageTransform,
  filter: DetectionFilter,
  labels: readonly string[],
): Detection[] {
  const k = Math.floor(data.length / 6);
  const boxes = new Float32Array(k * 4);
  const scores = new Float32Array(k);
  const classes = new Float32Array(k);
  for (let i = 0; i < k; i++) {
    boxes.set(data.subarray(i * 6, i * 6 + 4), i * 4);
    scores[i] = data[i * 6 + 4] as number;
    classes[i] = data[i * 6 + 5] as number;
  }
  const reading: BoxReading = { boxFormat: 'xyxy', normalized: false, inputWidth, inputHeight };
  return decodeRows(boxes, scores, classes, k, reading, { ...opts, classOffset: 0 }, transform, filter, labels);
}
