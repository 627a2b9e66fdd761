import type { InputSpec } from '../../config/input-spec.js';

/** The normalisation parameters the hot loop needs, resolved once per model. */
export interface NormalizeParams {
  layout: 'NCHW' | 'NHWC';
  channelOrder: 'RGB' | 'BGR';
  scale: number;
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

export function normalizeParamsOf(spec: InputSpec): NormalizeParams {
  return { layout: spec.layout, channelOrder: spec.channelOrder, scale: spec.scale, mean: spec.mean, std: spec.std };
}

/**
 * Checks an image of `width` x `height` RGB pixels against batch slot `index` of a target of `targetLength`
 * elements (slots of batchHeight x batchWidth x 3): the pixels are all there, the image fits its slot, the slot lies
 * in the target. Returns the slot's first element.
 */
function slotStart(pixels: Uint8Array, width: number, height: number, targetLength: number, index: number, batchHeight: number, batchWidth: number): number {
  if (pixels.length < width * height * 3) {
    throw new RangeError(`pixel buffer holds ${pixels.length} bytes, ${width}x${height}x3 needs ${width * height * 3}`);
  }
  if (width > batchWidth || height > batchHeight) {
    throw new RangeError(`image ${width}x${height} does not fit the batch slot ${batchWidth}x${batchHeight}`);
  }
  const slot = batchHeight * batchWidth * 3;
  const base = index * slot;
  if (base + slot > targetLength) throw new RangeError(`batch slot ${index} lies outside the target tensor`);
  return base;
}

/**
 * Writes one image into slot `index` of a batch tensor.
 *
 * `pixels` is interleaved RGB, 8-bit, `width` x `height` (what sharp's raw output gives). The batch tensor is
 * `[N, 3, batchHeight, batchWidth]` (NCHW) or `[N, batchHeight, batchWidth, 3]` (NHWC); the image sits at its
 * top-left, and the rest of the slot (when the batch is wider or taller than the image) is set to `padValue`,
 * which is a value after normalisation (PaddleOCR pads recognizer crops with 0).
 *
 * x = p * (scale / std[c]) - mean[c] / std[c], with c the tensor channel: for BGR, tensor channel 0 reads the
 * image's B. Runs on whichever thread owns `target` (the runner's worker thread).
 */
export function normalizeInto(
  pixels: Uint8Array,
  width: number,
  height: number,
  params: NormalizeParams,
  target: Float32Array,
  index: number,
  batchHeight: number,
  batchWidth: number,
  padValue = 0,
): void {
  const base = slotStart(pixels, width, height, target.length, index, batchHeight, batchWidth);
  const plane = batchHeight * batchWidth;
  // Tensor channel t reads image channel src[t]; a[t] and b[t] fold scale, mean and std into one multiply-add.
  const src = params.channelOrder === 'RGB' ? [0, 1, 2] : [2, 1, 0];
  const a0 = params.scale / params.std[0];
  const a1 = params.scale / params.std[1];
  const a2 = params.scale / params.std[2];
  const b0 = -params.mean[0] / params.std[0];
  const b1 = -params.mean[1] / params.std[1];
  const b2 = -params.mean[2] / params.std[2];
  const s0 = src[0] as number;
  const s1 = src[1] as number;
  const s2 = src[2] as number;
  const padded = width !== batchWidth || height !== batchHeight;
  if (padded) target.fill(padValue, base, base + plane * 3);

  if (params.layout === 'NCHW') {
    const c1 = base + plane;
    const c2 = base + 2 * plane;
    for (let y = 0; y < height; y++) {
      let p = y * width * 3;
      let o = y * batchWidth;
      for (let x = 0; x < width; x++, p += 3, o++) {
        target[base + o] = (pixels[p + s0] as number) * a0 + b0;
        target[c1 + o] = (pixels[p + s1] as number) * a1 + b1;
        target[c2 + o] = (pixels[p + s2] as number) * a2 + b2;
      }
    }
  } else {
    for (let y = 0; y < height; y++) {
      let p = y * width * 3;
      let o = base + y * batchWidth * 3;
      for (let x = 0; x < width; x++, p += 3, o += 3) {
        target[o] = (pixels[p + s0] as number) * a0 + b0;
        target[o + 1] = (pixels[p + s1] as number) * a1 + b1;
        target[o + 2] = (pixels[p + s2] as number) * a2 + b2;
      }
    }
  }
}

/**
 * The pixel (image channels R, G, B, 0..255) that normalises to `padValue` in every tensor channel, or undefined
 * where there is none: the value a uint8 batch (uint8-prefix.ts) pads with so the model sees what normalizeInto's
 * padding gives. PaddleOCR's recogniser pads with 0 after (p / 255 - 0.5) / 0.5, which is pixel 127.5: none.
 */
export function padPixelOf(params: NormalizeParams, padValue: number): [number, number, number] | undefined {
  const src = params.channelOrder === 'RGB' ? [0, 1, 2] : [2, 1, 0];
  const pixel: [number, number, number] = [0, 0, 0];
  for (let t = 0; t < 3; t++) {
    const std = params.std[t] as number;
    const p = (padValue * std + (params.mean[t] as number)) / params.scale;
    const rounded = Math.round(p);
    if (Math.abs(p - rounded) > 1e-3 || rounded < 0 || rounded > 255) return undefined;
    pixel[src[t] as number] = rounded;
  }
  return pixel;
}

/**
 * The pixel nearest to normalising to `padValue` (each channel rounded and clamped to 0..255), and how far from
 * `padValue` it normalises (the largest tensor-channel difference). For padding whose value the model's answer does
 * not depend on: a size bucket's rest, which the detector's box search never reads (tasks/ocr: the padding is
 * masked), where ImageNet's mean gives pixel (124, 116, 104), within 0.009 of 0. A stage whose answers depend on its
 * padding (the recogniser's width padding) takes uint8 input only where padPixelOf finds the exact pixel
 * (uint8-model.ts, decideUint8Input).
 */
export function nearestPadPixelOf(params: NormalizeParams, padValue: number): { pixel: [number, number, number]; error: number } {
  const src = params.channelOrder === 'RGB' ? [0, 1, 2] : [2, 1, 0];
  const pixel: [number, number, number] = [0, 0, 0];
  let error = 0;
  for (let t = 0; t < 3; t++) {
    const std = params.std[t] as number;
    const mean = params.mean[t] as number;
    const p = Math.min(255, Math.max(0, Math.round((padValue * std + mean) / params.scale)));
    pixel[src[t] as number] = p;
    error = Math.max(error, Math.abs((p * params.scale - mean) / std - padValue));
  }
  return { pixel, error };
}

/**
 * Writes one image's pixels into slot `index` of a uint8 batch `[N, batchHeight, batchWidth, 3]` (interleaved RGB,
 * what a model with the uint8 prefix takes), at the slot's top-left; the rest of the slot, where the image is
 * smaller, is set to `padPixel`. One copy per image row: no arithmetic here, the session normalises.
 */
export function copyPixelsInto(
  pixels: Uint8Array,
  width: number,
  height: number,
  target: Uint8Array,
  index: number,
  batchHeight: number,
  batchWidth: number,
  padPixel: readonly [number, number, number] | undefined,
): void {
  const row = width * 3;
  const base = slotStart(pixels, width, height, target.length, index, batchHeight, batchWidth);
  const slotBytes = batchHeight * batchWidth * 3;
  if (width === batchWidth && height === batchHeight) {
    target.set(pixels.subarray(0, slotBytes), base);
    return;
  }
  if (padPixel === undefined) {
    throw new RangeError(`image ${width}x${height} in a ${batchWidth}x${batchHeight} slot needs padding, and no pixel normalises to the pad value`);
  }
  const [r, g, b] = padPixel;
  if (r === g && g === b) target.fill(r, base, base + slotBytes);
  else for (let o = base; o < base + slotBytes; o += 3) {
    target[o] = r;
    target[o + 1] = g;
    target[o + 2] = b;
  }
  for (let y = 0; y < height; y++) target.set(pixels.subarray(y * row, y * row + row), base + y * batchWidth * 3);
}

/**
 * Writes one image's pixels, as they are (no scale, mean or std), into slot `index` of a uint8 batch in the
 * params' layout and channel order: `[N, 3, batchHeight, batchWidth]` (NCHW) or `[N, batchHeight, batchWidth, 3]`
 * (NHWC), the image at the slot's top-left and the rest set to `padByte`. What a model whose own input is uint8
 * takes (TensorFlow's detection exports); not the uint8 prefix's input (copyPixelsInto), which is always RGB NHWC.
 */
export function arrangePixelsInto(
  pixels: Uint8Array,
  width: number,
  height: number,
  params: Pick<NormalizeParams, 'layout' | 'channelOrder'>,
  target: Uint8Array,
  index: number,
  batchHeight: number,
  batchWidth: number,
  padByte = 0,
): void {
  const base = slotStart(pixels, width, height, target.length, index, batchHeight, batchWidth);
  const plane = batchHeight * batchWidth;
  if (width !== batchWidth || height !== batchHeight) target.fill(padByte, base, base + plane * 3);
  const bgr = params.channelOrder === 'BGR';
  if (params.layout === 'NHWC') {
    if (!bgr) {
      const row = width * 3;
      for (let y = 0; y < height; y++) target.set(pixels.subarray(y * row, y * row + row), base + y * batchWidth * 3);
      return;
    }
    for (let y = 0; y < height; y++) {
      let p = y * width * 3;
      let o = base + y * batchWidth * 3;
      for (let x = 0; x < width; x++, p += 3, o += 3) {
        target[o] = pixels[p + 2] as number;
        target[o + 1] = pixels[p + 1] as number;
        target[o + 2] = pixels[p] as number;
      }
    }
    return;
  }
  // NCHW: tensor channel t reads image channel src[t].
  const s0 = bgr ? 2 : 0;
  const s2 = bgr ? 0 : 2;
  const c1 = base + plane;
  const c2 = base + 2 * plane;
  for (let y = 0; y < height; y++) {
    let p = y * width * 3;
    let o = y * batchWidth;
    for (let x = 0; x < width; x++, p += 3, o++) {
      target[base + o] = pixels[p + s0] as number;
      target[c1 + o] = pixels[p + 1] as number;
      target[c2 + o] = pixels[p + s2] as number;
    }
  }
}
