/**
 * Text-line crops for the recogniser, after PaddleOCR's `get_rotate_crop_image` and `resize_norm_img`.
 *
 * Pure JS on 8-bit interleaved RGB: crops are small (a text line), so a hand-written warp is cheaper than a round
 * trip through sharp. Every function returns a new buffer that the caller owns; inputs are only read.
 *
 * Deviations from PaddleOCR: the perspective warp samples bilinearly where PaddleOCR uses INTER_CUBIC (both with
 * replicated borders); the resize is OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing) computed in
 * floating point and rounded, where OpenCV uses 11-bit fixed point (at most 1 level apart).
 */
import type { PreparedPixels } from '../../core/types.js';
import type { Point, Quad } from './db-postprocess.js';

/** An 8-bit interleaved RGB image, `width * height * 3` bytes. */
export type RgbImage = PreparedPixels;

export interface CropOptions {
  /** A crop at least this many times taller than wide is a vertical line: it is turned 90° counter-clockwise. */
  verticalAspectRatio: number;
}

export interface RecognizerResizeOptions {
  /** Tensor height; the crop is scaled to it keeping its aspect ratio. */
  height: number;
  /** Widths beyond this are squeezed to it (PaddleOCR caps at the batch width). */
  maxWidth: number;
}

export const CROP_DEFAULTS: Readonly<CropOptions> = Object.freeze({ verticalAspectRatio: 1.5 });

/**
 * PP-OCR recogniser input: height 48 (rec_image_shape 3,48,320). PaddleOCR pads each batch to at least
 * `minBatchWidth` (320) and to the widest crop in it, with 0 after normalisation; `maxWidth` is our own bound on
 * the work one very long line may cause.
 */
export const RECOGNIZER_DEFAULTS = Object.freeze({ height: 48, maxWidth: 3200, minBatchWidth: 320 });

/**
 * Cuts the quadrilateral `polygon` (tl, tr, br, bl in image pixels, as dbPostprocess returns) out of `image` and
 * warps it upright: width = the longer of the top and bottom edges, height = the longer of the left and right
 * edges (both truncated to integers, at least 1).
 */
export function cropTextLine(image: RgbImage, polygon: Quad, options: Partial<CropOptions> = {}): RgbImage {
  const opts: CropOptions = { ...CROP_DEFAULTS, ...options };
  const [p0, p1, p2, p3] = polygon;
  const width = Math.max(1, Math.trunc(Math.max(dist(p0, p1), dist(p2, p3))));
  const height = Math.max(1, Math.trunc(Math.max(dist(p0, p3), dist(p1, p2))));
  const dst: Quad = [
    [0, 0],
    [width, 0],
    [width, height],
    [0, height],
  ];
  // Maps crop pixel centres to image coordinates (the inverse of OpenCV's getPerspectiveTransform(src, dst)).
  const h = perspectiveTransform(dst, polygon) ?? boundingBoxTransform(polygon, width, height);

  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const w = h[6] * x + h[7] * y + 1;
      const sx = (h[0] * x + h[1] * y + h[2]) / w;
      const sy = (h[3] * x + h[4] * y + h[5]) / w;
      sampleBilinear(image, sx, sy, out, (y * width + x) * 3);
    }
  }
  const crop = { pixels: out, width, height };
  return height / width >= opts.verticalAspectRatio ? rotate90CounterClockwise(crop) : crop;
}

/**
 * Scales a crop to `height` rows keeping its aspect ratio: width = ceil(height * w / h), at most maxWidth, as
 * PaddleOCR's resize_norm_img. Bilinear with OpenCV's INTER_LINEAR sample positions.
 */
export function resizeForRecognizer(crop: RgbImage, options: RecognizerResizeOptions): RgbImage {
  const ratio = crop.width / crop.height;
  const width = Math.max(1, Math.min(options.maxWidth, Math.ceil(options.height * ratio)));
  return resizeBilinear(crop, width, options.height);
}

/** Resize with OpenCV INTER_LINEAR semantics: src = (dst + 0.5) * scale - 0.5, clamped to the edge pixels. */
export function resizeBilinear(image: RgbImage, width: number, height: number): RgbImage {
  const { pixels: src, width: sw, height: sh } = image;
  const out = new Uint8Array(width * height * 3);
  const xs = samplePositions(sw, width);
  const ys = samplePositions(sh, height);
  for (let y = 0; y < height; y++) {
    const y0 = ys.i0[y] as number;
    const y1 = ys.i1[y] as number;
    const fy = ys.f[y] as number;
    for (let x = 0; x < width; x++) {
      const x0 = xs.i0[x] as number;
      const x1 = xs.i1[x] as number;
      const fx = xs.f[x] as number;
      const a = (y0 * sw + x0) * 3;
      const b = (y0 * sw + x1) * 3;
      const c = (y1 * sw + x0) * 3;
      const d = (y1 * sw + x1) * 3;
      const o = (y * width + x) * 3;
      for (let k = 0; k < 3; k++) {
        const top = (src[a + k] as number) * (1 - fx) + (src[b + k] as number) * fx;
        const bottom = (src[c + k] as number) * (1 - fx) + (src[d + k] as number) * fx;
        out[o + k] = Math.round(top * (1 - fy) + bottom * fy);
      }
    }
  }
  return { pixels: out, width, height };
}

function samplePositions(srcSize: number, dstSize: number): { i0: Int32Array; i1: Int32Array; f: Float64Array } {
  const scale = srcSize / dstSize;
  const i0 = new Int32Array(dstSize);
  const i1 = new Int32Array(dstSize);
  const f = new Float64Array(dstSize);
  for (let d = 0; d < dstSize; d++) {
    let s = (d + 0.5) * scale - 0.5;
    if (s < 0) s = 0;
    let lo = Math.floor(s);
    let frac = s - lo;
    if (lo >= srcSize - 1) {
      lo = srcSize - 1;
      frac = 0;
    }
    i0[d] = lo;
    i1[d] = Math.min(lo + 1, srcSize - 1);
    f[d] = frac;
  }
  return { i0, i1, f };
}

/** np.rot90: the image turned 90° counter-clockwise; the last column becomes the first row. */
export function rotate90CounterClockwise(image: RgbImage): RgbImage {
  const { pixels, width, height } = image;
  const out = new Uint8Array(pixels.length);
  // Output is height wide and width tall; output (x, y) reads input (width - 1 - y, x).
  for (let y = 0; y < width; y++) {
    for (let x = 0; x < height; x++) {
      const s = (x * width + (width - 1 - y)) * 3;
      const o = (y * height + x) * 3;
      out[o] = pixels[s] as number;
      out[o + 1] = pixels[s + 1] as number;
      out[o + 2] = pixels[s + 2] as number;
    }
  }
  return { pixels: out, width: height, height: width };
}

type Homography = [number, number, number, number, number, number, number, number];

/** Bilinear sample at (sx, sy) with replicated borders, written to out[o..o+2]. */
function sampleBilinear(image: RgbImage, sx: number, sy: number, out: Uint8Array, o: number): void {
  const { pixels, width, height } = image;
  const x = Math.min(Math.max(sx, 0), width - 1);
  const y = Math.min(Math.max(sy, 0), height - 1);
  const x0 = Math.floor(x);
  const y0 = Math.floor(y);
  const x1 = Math.min(x0 + 1, width - 1);
  const y1 = Math.min(y0 + 1, height - 1);
  const fx = x - x0;
  const fy = y - y0;
  const a = (y0 * width + x0) * 3;
  const b = (y0 * width + x1) * 3;
  const c = (y1 * width + x0) * 3;
  const d = (y1 * width + x1) * 3;
  for (let k = 0; k < 3; k++) {
    const top = (pixels[a + k] as number) * (1 - fx) + (pixels[b + k] as number) * fx;
    const bottom = (pixels[c + k] as number) * (1 - fx) + (pixels[d + k] as number) * fx;
    out[o + k] = Math.round(top * (1 - fy) + bottom * fy);
  }
}

/**
 * The projective map taking from[i] to to[i] (h8 = 1), by Gaussian elimination with partial pivoting on the usual
 * 8x8 system; undefined when the quadrilaterals are degenerate.
 */
function perspectiveTransform(from: Quad, to: Quad): Homography | undefined {
  const m: number[][] = [];
  for (let i = 0; i < 4; i++) {
    const [x, y] = from[i] as Point;
    const [u, v] = to[i] as Point;
    m.push([x, y, 1, 0, 0, 0, -u * x, -u * y, u]);
    m.push([0, 0, 0, x, y, 1, -v * x, -v * y, v]);
  }
  for (let col = 0; col < 8; col++) {
    let pivot = col;
    for (let r = col + 1; r < 8; r++) {
      if (Math.abs((m[r] as number[])[col] as number) > Math.abs((m[pivot] as number[])[col] as number)) pivot = r;
    }
    const pr = m[pivot] as number[];
    if (Math.abs(pr[col] as number) < 1e-10) return undefined;
    m[pivot] = m[col] as number[];
    m[col] = pr;
    for (let r = 0; r < 8; r++) {
      if (r === col) continue;
      const row = m[r] as number[];
      const factor = (row[col] as number) / (pr[col] as number);
      if (factor === 0) continue;
      for (let k = col; k < 9; k++) row[k] = (row[k] as number) - factor * (pr[k] as number);
    }
  }
  // Gauss-Jordan leaves row i with its only non-zero coefficient in column i.
  const h = m.map((row, i) => (row[8] as number) / (row[i] as number));
  return h as Homography;
}

/** Fallback for a degenerate polygon: the crop scaled onto the polygon's axis-aligned bounding box. */
function boundingBoxTransform(polygon: Quad, width: number, height: number): Homography {
  const xs = polygon.map((p) => p[0]);
  const ys = polygon.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const y0 = Math.min(...ys);
  return [(Math.max(...xs) - x0) / width, 0, x0, 0, (Math.max(...ys) - y0) / height, y0, 0, 0];
}

function dist(a: Point, b: Point): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1]);
}
