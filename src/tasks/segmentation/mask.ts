import type { ImageTransform } from '../../core/types.js';
import { encodeRleCounts } from './rle.js';
import { encodePng } from './png.js';

/**
 * Semantic segmentation postprocessing: a model's output for one image (per-pixel class logits, NHWC or NCHW, or a
 * class map) -> the class map at the original (EXIF-upright) image's size -> per class its pixel count, fraction
 * and box, and its mask as COCO run-length encoding, or the whole class map as a PNG.
 *
 * Pure and synchronous: it runs in the mask threads (mask-worker.ts), never on the server's main thread. Memory is
 * the class map at the original size (1 or 2 bytes a pixel) plus, for bilinear, two rows of logits at that width.
 *
 * Geometry: the transform maps an original pixel's edge coordinate to the tensor's (u = x * scale + offset); the
 * output grid covers the tensor, so an original pixel centre (x + 0.5) lands at u * outW / inW in output cells.
 * Nearest takes the cell it falls in; bilinear interpolates between cell centres (half-pixel convention, as
 * sharp's and PyTorch's align_corners=False resizes do), edges clamped. Pixels outside the tensor's view (a
 * centre crop) take the nearest edge cell.
 */

/** How the model's output is laid out: per-class logits (channels last or first), or one class index per pixel. */
export type OutputLayout = 'NHWC' | 'NCHW' | 'class-map';
export type Upsample = 'nearest' | 'bilinear';
export type MaskFormat = 'rle' | 'png';

/** The job carries the image's transform (core/types.ts): where the tensor came from in the original image. */
export interface MaskJob extends ImageTransform {
  /** The output of one image, batch dim of 1 included or not (dims says). Owned by the job: it is transferred. */
  data: Float32Array;
  dims: number[];
  layout: OutputLayout;
  /** Number of classes (labels). */
  classCount: number;
  upsample: Upsample;
  /** Tensor (model input) size. */
  inputWidth: number;
  inputHeight: number;
  /** Classes to answer; undefined: every class. */
  keep: number[] | undefined;
  /** Classes covering fewer pixels than this are left out (their pixels become void in the PNG). */
  minArea: number;
  format: MaskFormat;
  /** Most bytes the masks may take (RLE strings, or the PNG): past it RESPONSE_TOO_LARGE. */
  maxBytes: number;
}

export interface MaskClass {
  index: number;
  /** Pixels of the class at the original size. */
  area: number;
  /** Pixel box, x2/y2 exclusive. */
  box: { x1: number; y1: number; x2: number; y2: number };
  /** COCO compressed RLE string (column-major), in rle format only. */
  counts?: string;
}

export interface MaskResult {
  width: number;
  height: number;
  classes: MaskClass[];
  /** PNG class map, in png format only: pixel = class index, `voidValue` where a class was left out. */
  png?: Uint8Array;
  voidValue: number;
}

/** Thrown when the answer would pass maxBytes; the pool turns it into RESPONSE_TOO_LARGE. */
export class MaskTooLargeError extends Error {
  constructor(readonly bytes: number, readonly limit: number) {
    super(`the masks would take more than ${limit} bytes`);
    this.name = 'MaskTooLargeError';
  }
}

/** The PNG's value for pixels of classes left out: 255 (8-bit) or 65535 (16-bit, past 255 classes). */
export function voidValueOf(classCount: number): number {
  return classCount <= 255 ? 255 : 65535;
}

interface Grid {
  width: number;
  height: number;
  /** Element offsets: value of class c at (y, x) = data[y * yStride + x * xStride + c * cStride]. */
  yStride: number;
  xStride: number;
  cStride: number;
  channels: number;
}

/** The output's spatial grid, from its dims and layout (a leading batch dim of 1 allowed). */
export function gridOf(dims: readonly number[], layout: OutputLayout, classCount: number): Grid {
  const d = dims.length > 0 && dims[0] === 1 && dims.length >= (layout === 'class-map' ? 3 : 4) ? dims.slice(1) : dims.slice();
  if (layout === 'class-map') {
    // [H, W] or [1, H, W]
    const hw = d.length === 3 && d[0] === 1 ? d.slice(1) : d;
    if (hw.length !== 2) throw new Error(`a class-map output has dims [${dims.join(',')}], not [N,H,W] or [N,1,H,W]`);
    const [h, w] = hw as [number, number];
    return { height: h, width: w, yStride: w, xStride: 1, cStride: 0, channels: 1 };
  }
  if (d.length !== 3) throw new Error(`a logits output has dims [${dims.join(',')}], not rank 4`);
  if (layout === 'NHWC') {
    const [h, w, c] = d as [number, number, number];
    if (c !== classCount) throw new Error(`the output has ${c} channels, the labels ${classCount}`);
    return { height: h, width: w, yStride: w * c, xStride: c, cStride: 1, channels: c };
  }
  const [c, h, w] = d as [number, number, number];
  if (c !== classCount) throw new Error(`the output has ${c} channels, the labels ${classCount}`);
  return { height: h, width: w, yStride: w, xStride: 1, cStride: h * w, channels: c };
}

/** Per original column (or row), the output cell (nearest) or the two cells and weight (bilinear). */
interface AxisMap {
  i0: Int32Array;
  i1: Int32Array;
  w1: Float32Array;
}

function axisMap(originalSize: number, scale: number, offset: number, inputSize: number, outputSize: number, upsample: Upsample): AxisMap {
  const i0 = new Int32Array(originalSize);
  const i1 = new Int32Array(originalSize);
  const w1 = new Float32Array(originalSize);
  const ratio = outputSize / inputSize;
  const last = outputSize - 1;
  for (let x = 0; x < originalSize; x++) {
    const o = ((x + 0.5) * scale + offset) * ratio;
    if (upsample === 'nearest') {
      const i = Math.min(last, Math.max(0, Math.floor(o)));
      i0[x] = i;
      i1[x] = i;
      continue;
    }
    const c = Math.min(last, Math.max(0, o - 0.5));
    const lo = Math.floor(c);
    i0[x] = lo;
    i1[x] = Math.min(last, lo + 1);
    w1[x] = c - lo;
  }
  return { i0, i1, w1 };
}

/** Argmax over classes of one cell: the first of equal maxima; NaN never wins. */
function argmaxAt(data: Float32Array, base: number, grid: Grid): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let c = 0; c < grid.channels; c++) {
    const v = data[base + c * grid.cStride] as number;
    if (v > bestValue) {
      bestValue = v;
      best = c;
    }
  }
  return best;
}

/** The class map at the output's own size (void where a class-map value is not a class). */
function lowClassMap(job: MaskJob, grid: Grid, voidValue: number): Uint16Array {
  const out = new Uint16Array(grid.width * grid.height);
  for (let y = 0; y < grid.height; y++) {
    for (let x = 0; x < grid.width; x++) {
      const base = y * grid.yStride + x * grid.xStride;
      if (job.layout === 'class-map') {
        const v = job.data[base] as number;
        out[y * grid.width + x] = Number.isInteger(v) && v >= 0 && v < job.classCount ? v : voidValue;
      } else {
        out[y * grid.width + x] = argmaxAt(job.data, base, grid);
      }
    }
  }
  return out;
}

/** The class map at the original size, row-major. */
export function classMapOf(job: MaskJob): Uint8Array | Uint16Array {
  const grid = gridOf(job.dims, job.layout, job.classCount);
  const voidValue = voidValueOf(job.classCount);
  const W = job.originalWidth;
  const H = job.originalHeight;
  const full = voidValue === 255 ? new Uint8Array(W * H) : new Uint16Array(W * H);
  const upsample = job.layout === 'class-map' ? 'nearest' : job.upsample;
  const xs = axisMap(W, job.scaleX, job.offsetX, job.inputWidth, grid.width, upsample);
  const ys = axisMap(H, job.scaleY, job.offsetY, job.inputHeight, grid.height, upsample);
  if (upsample === 'nearest') {
    const low = lowClassMap(job, grid, voidValue);
    for (let y = 0; y < H; y++) {
      const row = (ys.i0[y] as number) * grid.width;
      const at = y * W;
      for (let x = 0; x < W; x++) full[at + x] = low[row + (xs.i0[x] as number)] as number;
    }
    return full;
  }
  // Bilinear on the logits: each source row is interpolated along x once (two rows kept), then the two rows along y.
  const C = grid.channels;
  let rowA = new Float32Array(W * C);
  let rowB = new Float32Array(W * C);
  let rowAIndex = -1;
  let rowBIndex = -1;
  const fill = (target: Float32Array, sy: number): void => {
    const yBase = sy * grid.yStride;
    for (let x = 0; x < W; x++) {
      const a = yBase + (xs.i0[x] as number) * grid.xStride;
      const b = yBase + (xs.i1[x] as number) * grid.xStride;
      const w = xs.w1[x] as number;
      const at = x * C;
      for (let c = 0; c < C; c++) {
        const va = job.data[a + c * grid.cStride] as number;
        const vb = job.data[b + c * grid.cStride] as number;
        target[at + c] = va + (vb - va) * w;
      }
    }
  };
  for (let y = 0; y < H; y++) {
    const y0 = ys.i0[y] as number;
    const y1 = ys.i1[y] as number;
    if (rowAIndex !== y0) {
      if (rowBIndex === y0) {
        [rowA, rowB] = [rowB, rowA];
        rowAIndex = y0;
        rowBIndex = -1;
      } else {
        fill(rowA, y0);
        rowAIndex = y0;
      }
    }
    if (rowBIndex !== y1) {
      fill(rowB, y1);
      rowBIndex = y1;
    }
    const wy = ys.w1[y] as number;
    const at = y * W;
    for (let x = 0; x < W; x++) {
      const base = x * C;
      let best = 0;
      let bestValue = -Infinity;
      for (let c = 0; c < C; c++) {
        const va = rowA[base + c] as number;
        const v = va + ((rowB[base + c] as number) - va) * wy;
        if (v > bestValue) {
          bestValue = v;
          best = c;
        }
      }
      full[at + x] = best;
    }
  }
  return full;
}

interface ClassStats {
  area: number;
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

function statsOf(full: Uint8Array | Uint16Array, W: number, H: number, classCount: number): ClassStats[] {
  const stats = Array.from({ length: classCount }, () => ({ area: 0, x1: W, y1: H, x2: 0, y2: 0 }));
  for (let y = 0; y < H; y++) {
    const at = y * W;
    for (let x = 0; x < W; x++) {
      const s = stats[full[at + x] as number];
      if (s === undefined) continue; // void
      s.area++;
      if (x < s.x1) s.x1 = x;
      if (x >= s.x2) s.x2 = x + 1;
      if (y < s.y1) s.y1 = y;
      if (y >= s.y2) s.y2 = y + 1;
    }
  }
  return stats;
}

/**
 * Column-major run boundaries of every kept class, in one pass: a class's mask switches on or off at position
 * p = x * H + y where the class map changes to or from it. Each boundary costs the answer at least one byte, so
 * their total is checked against maxBytes as they are found.
 */
function boundariesOf(full: Uint8Array | Uint16Array, W: number, H: number, kept: ReadonlyMap<number, number[]>, maxBytes: number): void {
  let total = 0;
  let prev = -1;
  for (let x = 0; x < W; x++) {
    for (let y = 0; y < H; y++) {
      const v = full[y * W + x] as number;
      if (v === prev) continue;
      const p = x * H + y;
      const ending = kept.get(prev);
      if (ending !== undefined) ending.push(p);
      const starting = kept.get(v);
      if (starting !== undefined) starting.push(p);
      prev = v;
      total += (ending !== undefined ? 1 : 0) + (starting !== undefined ? 1 : 0);
      if (total > maxBytes) throw new MaskTooLargeError(total, maxBytes);
    }
  }
}

/** Runs of one class from its boundaries: zeros first (COCO counts start with the background run). */
function countsOf(boundaries: readonly number[], n: number): number[] {
  const counts: number[] = [];
  let at = 0;
  for (const b of boundaries) {
    counts.push(b - at);
    at = b;
  }
  counts.push(n - at);
  return counts;
}

export function buildMask(job: MaskJob): MaskResult {
  const W = job.originalWidth;
  const H = job.originalHeight;
  const full = classMapOf(job);
  const stats = statsOf(full, W, H, job.classCount);
  const wanted = job.keep === undefined ? undefined : new Set(job.keep);
  const minArea = Math.max(1, job.minArea);
  const keptIndices: number[] = [];
  stats.forEach((s, index) => {
    if (s.area >= minArea && (wanted === undefined || wanted.has(index))) keptIndices.push(index);
  });
  const classes: MaskClass[] = keptIndices.map((index) => {
    const s = stats[index] as ClassStats;
    return { index, area: s.area, box: { x1: s.x1, y1: s.y1, x2: s.x2, y2: s.y2 } };
  });
  const voidValue = voidValueOf(job.classCount);
  if (job.format === 'png') {
    if (keptIndices.length < stats.filter((s) => s.area > 0).length) {
      const keep = new Uint8Array(job.classCount);
      for (const i of keptIndices) keep[i] = 1;
      for (let i = 0; i < full.length; i++) {
        const v = full[i] as number;
        if (v !== voidValue && keep[v] !== 1) full[i] = voidValue;
      }
    }
    const png = encodePng(full, W, H);
    if (png.byteLength > job.maxBytes) throw new MaskTooLargeError(png.byteLength, job.maxBytes);
    return { width: W, height: H, classes, png, voidValue };
  }
  const boundaries = new Map(keptIndices.map((i) => [i, [] as number[]]));
  boundariesOf(full, W, H, boundaries, job.maxBytes);
  let bytes = 0;
  classes.forEach((c) => {
    c.counts = encodeRleCounts(countsOf(boundaries.get(c.index) ?? [], W * H));
    bytes += c.counts.length;
    if (bytes > job.maxBytes) throw new MaskTooLargeError(bytes, job.maxBytes);
  });
  return { width: W, height: H, classes, voidValue };
}
