/**
 * Decoding for DETR-family heads (RT-DETR, DETR, D-FINE): Q queries, each a box (centre x, centre y, width, height as
 * fractions of the input) and class logits. No NMS: a set predictor gives each object one query (the manifest may
 * still ask for it).
 *   'sigmoid' (RT-DETR): score = sigmoid(logit) per class; every query and class above the threshold is a candidate,
 *   as RT-DETR's post-processor takes the top scores over all query-class pairs.
 *   'softmax' (DETR): C + 1 logits, the last "no object"; each query is its best real class at its softmax probability.
 *   'probabilities' (Ultralytics' RT-DETR export, whose graph ends in the sigmoid): as 'sigmoid', the values as they are.
 */
import type { ImageTransform } from '../../core/types.js';
import { boxToOriginal, classMask, finishDetections } from './nms.js';
import type { Detection, DetectionFilter } from './nms.js';

export interface DetrHead {
  queries: number;
  /** Real classes C (softmax logits have C + 1 columns). */
  numClasses: number;
  scores: 'sigmoid' | 'softmax' | 'probabilities';
  nms: boolean;
  inputWidth: number;
  inputHeight: number;
}

/** Where the boxes and the logits lie: query q's box at boxes[q·boxStride …], its logits at logits[logitOffset + q·logitStride …]. */
export interface DetrViews {
  boxes: Float32Array;
  boxStride: number;
  logits: Float32Array;
  logitOffset: number;
  logitStride: number;
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

export function decodeDetr(
  views: DetrViews,
  head: DetrHead,
  transform: ImageTransform,
  filter: DetectionFilter,
  labels: readonly string[],
): Detection[] {
  const { queries, numClasses, inputWidth: w, inputHeight: h } = head;
  const columns = head.scores === 'softmax' ? numClasses + 1 : numClasses;
  const { boxes, boxStride, logits, logitOffset, logitStride } = views;
  if (numClasses < 1) throw new RangeError('a DETR head needs at least one class');
  if (queries > 0 && (boxes.length < (queries - 1) * boxStride + 4 || logits.length < logitOffset + (queries - 1) * logitStride + columns)) {
    throw new RangeError(`the outputs are too short for ${queries} queries of ${columns} logits`);
  }
  const threshold = filter.scoreThreshold;
  const allowed = classMask(numClasses, filter.classes);
  const candidates: Detection[] = [];
  const boxOf = (q: number): Detection['box'] | undefined => {
    const b = q * boxStride;
    const cx = (boxes[b] as number) * w;
    const cy = (boxes[b + 1] as number) * h;
    const hw = ((boxes[b + 2] as number) * w) / 2;
    const hh = ((boxes[b + 3] as number) * h) / 2;
    return boxToOriginal(cx - hw, cy - hh, cx + hw, cy + hh, transform);
  };
  for (let q = 0; q < queries; q++) {
    const base = logitOffset + q * logitStride;
    if (head.scores !== 'softmax') {
      const activate = head.scores === 'sigmoid';
      let box: Detection['box'] | undefined;
      for (let c = 0; c < numClasses; c++) {
        if (allowed !== undefined && allowed[c] === 0) continue;
        const value = logits[base + c] as number;
        const score = activate ? sigmoid(value) : value;
        if (!(score >= threshold)) continue;
        if (box === undefined) {
          box = boxOf(q);
          if (box === undefined) break;
        }
        candidates.push({ label: labels[c] ?? String(c), index: c, score, box });
      }
      continue;
    }
    // Softmax over all C + 1 columns (max subtracted for range), then the best real class (DETR's own reading:
    // "no object" only takes probability away).
    let max = -Infinity;
    for (let c = 0; c < columns; c++) max = Math.max(max, logits[base + c] as number);
    let sum = 0;
    let best = -1;
    let bestExp = -1;
    for (let c = 0; c < columns; c++) {
      const e = Math.exp((logits[base + c] as number) - max);
      sum += e;
      if (c < numClasses && e > bestExp) {
        best = c;
        bestExp = e;
      }
    }
    // A query whose best class is filtered out is dropped, not read as its next class.
    if (best < 0 || (allowed !== undefined && allowed[best] === 0)) continue;
    const score = bestExp / sum;
    if (!(score >= threshold)) continue;
    const box = boxOf(q);
    if (box === undefined) continue;
    candidates.push({ label: labels[best] ?? String(best), index: best, score, box });
  }
  return finishDetections(candidates, filter, head.nms);
}
