import { halfToNumber, numberToHalf } from '../tensor-codec.js';
import type { TensorMeta } from '../types.js';
import { arrangePixelsInto, normalizeInto, type NormalizeParams } from './normalize.js';

/**
 * The image input as the model itself declares it, and the tensor a batch of prepared pixels becomes for it. The
 * exports people bring differ in three ways, each handled here, in the worker thread that owns the session:
 * - element type: float32 (normalised, normalizeInto); float16 (normalised in float32, then rounded to half floats
 *   and fed as the model's own float16: no Cast in the graph, no precision the model does not have); uint8 (the
 *   pixels as they are: no scale, mean or std, only the layout and channel order; TensorFlow's detection exports);
 * - layout: NCHW or NHWC (the manifest's `input.layout`);
 * - batch dimension: present (rank 4) or absent (rank 3, torchvision exports `[3, H, W]`). A model without one runs
 *   one image per run, and the rest of the server sees it as a model whose batch dimension is fixed at 1: its
 *   reported inputs and outputs carry a leading 1 (withBatchDim), its feeds lose it (feedDimsOf) and its outputs
 *   gain it back (addBatchDim).
 */

export const IMAGE_INPUT_TYPES = ['float32', 'float16', 'uint8'] as const;
export type ImageInputType = (typeof IMAGE_INPUT_TYPES)[number];

export function isImageInputType(type: string): type is ImageInputType {
  return (IMAGE_INPUT_TYPES as readonly string[]).includes(type);
}

export interface ImageFeedPlan {
  type: ImageInputType;
  /** The model's image input has no batch dimension (rank 3). */
  batchless: boolean;
}

/** The plan for the model's own image input; throws where the input is no image input the runner can feed. */
export function imageFeedPlanOf(input: TensorMeta): ImageFeedPlan {
  if (!isImageInputType(input.type)) {
    throw new Error(`image input '${input.name}' is ${input.type}; image inputs may be ${IMAGE_INPUT_TYPES.join(', ')}`);
  }
  if (input.shape.length !== 3 && input.shape.length !== 4) {
    throw new Error(`image input '${input.name}' has rank ${input.shape.length}; an image input has rank 4 (or 3, without a batch dimension)`);
  }
  return { type: input.type, batchless: input.shape.length === 3 };
}

/** A batchless model's tensor as the server sees it: a leading batch dimension of 1. */
export function withBatchDim(meta: TensorMeta): TensorMeta {
  return { ...meta, shape: [1, ...meta.shape], symbolicShape: ['', ...meta.symbolicShape] };
}

export interface ImageFeed {
  type: ImageInputType;
  data: Float32Array | Uint16Array | Uint8Array;
  dims: number[];
}

/**
 * Builds image batch tensors for one session, reusing its buffers (which grow only when a larger batch arrives):
 * the tensor of one run stays valid until the next build, so runs must not overlap (the worker runs one at a time).
 */
export class ImageFeedBuilder {
  private floats = new Float32Array(0);
  private halves = new Uint16Array(0);
  private bytes = new Uint8Array(0);

  constructor(
    readonly plan: ImageFeedPlan,
    private readonly params: NormalizeParams,
  ) {}

  /**
   * `items[i]` is interleaved RGB pixels of width x height, placed at the top-left of batch row i; `rows` rows of
   * `height` x `width`. `padValue` is the value (after normalisation) of the parts of a row no image covers; for
   * uint8 input, where nothing is normalised, it is rounded and clamped to a byte.
   */
  build(items: readonly { pixels: Uint8Array; width: number; height: number }[], rows: number, height: number, width: number, padValue: number): ImageFeed {
    if (this.plan.batchless && rows !== 1) throw new Error(`a model without a batch dimension runs one image at a time, not ${rows}`);
    const need = rows * 3 * height * width;
    const { layout } = this.params;
    const dims = layout === 'NCHW' ? [rows, 3, height, width] : [rows, height, width, 3];
    const feedDims = this.plan.batchless ? dims.slice(1) : dims;
    if (this.plan.type === 'uint8') {
      if (this.bytes.length < need) this.bytes = new Uint8Array(need);
      const target = this.bytes.subarray(0, need);
      const pad = Math.min(255, Math.max(0, Math.round(padValue)));
      items.forEach((it, i) => arrangePixelsInto(it.pixels, it.width, it.height, this.params, target, i, height, width, pad));
      return { type: 'uint8', data: target, dims: feedDims };
    }
    if (this.floats.length < need) this.floats = new Float32Array(need);
    const floats = this.floats.subarray(0, need);
    items.forEach((it, i) => normalizeInto(it.pixels, it.width, it.height, this.params, floats, i, height, width, padValue));
    if (this.plan.type === 'float32') return { type: 'float32', data: floats, dims: feedDims };
    if (this.halves.length < need) this.halves = new Uint16Array(need);
    const halves = this.halves.subarray(0, need);
    toHalves(floats, halves);
    return { type: 'float16', data: halves, dims: feedDims };
  }
}

/** float32 values to IEEE half bits, rounded to nearest even (tensor-codec.ts's numberToHalf). */
export function toHalves(src: Float32Array, dst: Uint16Array): void {
  for (let i = 0; i < src.length; i++) dst[i] = numberToHalf(src[i] as number);
}

let halfTable: Float32Array | undefined;

/** IEEE half bits to float32 values, through a table of all 65536 (built once per thread, 256 KiB). */
export function fromHalves(src: Uint16Array): Float32Array {
  if (halfTable === undefined) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToNumber(h);
  }
  const table = halfTable;
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = table[src[i] as number] as number;
  return out;
}
