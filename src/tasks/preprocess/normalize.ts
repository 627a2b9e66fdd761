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
  if (pixels.length < width * height * 3) {
    throw new RangeError(`pixel buffer holds ${pixels.length} bytes, ${width}x${height}x3 needs ${width * height * 3}`);
  }
  if (width > batchWidth || height > batchHeight) {
    throw new RangeError(`image ${width}x${height} does not fit the batch slot ${batchWidth}x${batchHeight}`);
  }
  const plane = batchHeight * batchWidth;
  const base = index * plane * 3;
  if (base + plane * 3 > target.length) {
    throw new RangeError(`batch slot ${index} lies outside the target tensor`);
  }
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
