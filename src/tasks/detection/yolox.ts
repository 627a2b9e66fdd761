/**
 * YOLOX raw-head decoding (the `export_onnx.py` output: no decode, no NMS inside the graph).
 *
 * One image's output is `rows` x `cols` float32, row = anchor point `[tx, ty, tw, th, obj, cls_0 … cls_{C-1}]`
 * with obj and cls already sigmoid-ed. Rows run over the stride grids in order (8, 16, 32 by default), each
 * row-major (y outer, x inner). For an anchor at (gx, gy) with stride s:
 *   cx = (tx + gx)·s, cy = (ty + gy)·s, w = exp(tw)·s, h = exp(th)·s, score_c = obj·cls_c.
 * As in the YOLOX demo's class-aware `multiclass_nms`, every class whose score passes the threshold is a
 * candidate (one anchor can yield "dog" and "horse" on the same box); NMS then runs per class.
 */
import type { ImageTransform } from '../../core/types.js';
import { boxToOriginal, classMask, nms } from './nms.js';
import type { Detection, DetectionFilter } from './nms.js';

export const YOLOX_DEFAULT_STRIDES: readonly number[] = [8, 16, 32];

export interface YoloxOptions {
  /** Model input (tensor) size in pixels. */
  inputWidth: number;
  inputHeight: number;
  /** Grid strides in the order the rows use; default [8, 16, 32]. */
  strides?: readonly number[];
}

/** Number of anchor rows the grids give: sum over strides of floor(W/s)·floor(H/s). */
export function yoloxAnchorCount(inputWidth: number, inputHeight: number, strides = YOLOX_DEFAULT_STRIDES): number {
  let n = 0;
  for (const s of strides) n += Math.floor(inputWidth / s) * Math.floor(inputHeight / s);
  return n;
}

/**
 * Decodes one image's YOLOX output into detections in original-image pixels (clipped to the image), filtered
 * and non-max-suppressed per `filter`, sorted by score descending. `data` holds at least rows·cols values (a
 * subarray of a batch output is fine; it is only read). `labels[c]` names class c.
 */
export function decodeYolox(
  data: Float32Array,
  rows: number,
  cols: number,
  opts: YoloxOptions,
  transform: ImageTransform,
  filter: DetectionFilter,
  labels: readonly string[],
): Detection[] {
  const strides = opts.strides ?? YOLOX_DEFAULT_STRIDES;
  const expectedRows = yoloxAnchorCount(opts.inputWidth, opts.inputHeight, strides);
  if (rows !== expectedRows) {
    const grid = `strides [${strides.join(', ')}] on ${opts.inputWidth}x${opts.inputHeight}`;
    throw new RangeError(`YOLOX output has ${rows} rows, ${grid} give ${expectedRows}`);
  }
  if (cols < 6) throw new RangeError(`YOLOX output rows have ${cols} values, need 5 + at least one class`);
  if (data.length < rows * cols) throw new RangeError(`YOLOX output holds ${data.length} values, need ${rows * cols}`);

  const numClasses = cols - 5;
  const threshold = filter.scoreThreshold;
  const allowed = classMask(numClasses, filter.classes);
  const candidates: Detection[] = [];
  let base = 0;
  for (const s of strides) {
    const gw = Math.floor(opts.inputWidth / s);
    const gh = Math.floor(opts.inputHeight / s);
    for (let gy = 0; gy < gh; gy++) {
      for (let gx = 0; gx < gw; gx++, base += cols) {
        const obj = data[base + 4] as number;
        // cls <= 1, so score = obj·cls <= obj: an anchor whose obj misses the threshold has no candidate. Most
        // anchors stop here. Written so that NaN also stops.
        if (!(obj >= threshold)) continue;
        let box: Detection['box'] | undefined;
        for (let c = 0; c < numClasses; c++) {
          if (allowed !== undefined && allowed[c] === 0) continue;
          const score = obj * (data[base + 5 + c] as number);
          if (!(score >= threshold)) continue;
          if (box === undefined) {
            const cx = ((data[base] as number) + gx) * s;
            const cy = ((data[base + 1] as number) + gy) * s;
            const hw = (Math.exp(data[base + 2] as number) * s) / 2;
            const hh = (Math.exp(data[base + 3] as number) * s) / 2;
            box = boxToOriginal(cx - hw, cy - hh, cx + hw, cy + hh, transform);
            // Entirely outside the image (in the letterbox padding): no class of this anchor can be kept.
            if (box === undefined) break;
          }
          candidates.push({ label: labels[c] ?? String(c), index: c, score, box });
        }
      }
    }
  }
  return nms(candidates, filter);
}
