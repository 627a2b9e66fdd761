import type { InputSpec } from '../../config/input-spec.js';

/**
 * Resize geometry: how an upright image of a given size becomes a model's tensor (the sizes, offsets and crops),
 * computed without sharp; image.ts carries the plan out.
 */

/** Python 3's round(): halves go to the even neighbour (2.5 -> 2, 3.5 -> 4, -2.5 -> -2). */
export function pythonRound(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff < 0.5) return floor;
  if (diff > 0.5) return floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * PaddleOCR DetResizeForTest (resize_image_type0), step for step: ratio from the limit, int() truncation of the
 * scaled sides, then Python round to a multiple of 32, at least 32. 1280x960 with max 960 -> 720/32 = 22.5 -> 704.
 */
export function limitRound32Size(
  width: number,
  height: number,
  limitSideLen: number,
  limitType: 'max' | 'min',
): { width: number; height: number } {
  let ratio = 1;
  if (limitType === 'max') {
    if (Math.max(height, width) > limitSideLen) ratio = height > width ? limitSideLen / height : limitSideLen / width;
  } else if (Math.min(height, width) < limitSideLen) {
    ratio = height < width ? limitSideLen / height : limitSideLen / width;
  }
  const h = Math.trunc(height * ratio);
  const w = Math.trunc(width * ratio);
  return { width: Math.max(pythonRound(w / 32) * 32, 32), height: Math.max(pythonRound(h / 32) * 32, 32) };
}


/** How an upright w x h image becomes the tensor: the resize call, then a pad or a crop. */
export type ResizePlan =
  | { kind: 'fill'; width: number; height: number }
  | {
      kind: 'letterbox';
      /** Size of the resized image, and its place on the outWidth x outHeight canvas. */
      width: number;
      height: number;
      left: number;
      top: number;
      outWidth: number;
      outHeight: number;
      padValue: number;
    }
  | {
      kind: 'outside-crop';
      side: number;
      outWidth: number;
      outHeight: number;
      /** For extreme aspect ratios only: the centre of the upright image that is resized (see MAX_OUTSIDE_ASPECT). */
      preCrop?: { left: number; top: number; width: number; height: number };
    };

/**
 * The outside resize of shorter-side-center-crop scales the shorter side to `side`, so its longer side grows with the
 * aspect ratio: a 10000x1 PNG of a hundred bytes would become a 2,560,000 x 256 intermediate (about 2 GB and half a
 * minute of CPU) for a 224 x 224 crop. Past this ratio the longer side is first cut, centred, to this many times the
 * shorter: the centre crop taken afterwards lies inside it, so the answer is the same up to sub-pixel rounding.
 * Photos (within 4:1) never take this path, so their tensors stay those of the reference pipeline.
 */
export const MAX_OUTSIDE_ASPECT = 4;

export function planResize(spec: InputSpec, width: number, height: number): ResizePlan {
  const resize = spec.resize;
  switch (resize.mode) {
    case 'stretch':
      return { kind: 'fill', width: spec.width, height: spec.height };
    case 'limit-round32':
      return { kind: 'fill', ...limitRound32Size(width, height, resize.limitSideLen, resize.limitType) };
    case 'letterbox': {
      const r = Math.min(spec.width / width, spec.height / height);
      // At least one pixel, for extreme aspect ratios where floor(w*r) would be 0.
      const nw = Math.min(spec.width, Math.max(1, Math.floor(width * r)));
      const nh = Math.min(spec.height, Math.max(1, Math.floor(height * r)));
      const centred = resize.anchor === 'center';
      return {
        kind: 'letterbox',
        width: nw,
        height: nh,
        left: centred ? Math.floor((spec.width - nw) / 2) : 0,
        top: centred ? Math.floor((spec.height - nh) / 2) : 0,
        outWidth: spec.width,
        outHeight: spec.height,
        padValue: resize.padValue,
      };
    }
    case 'shorter-side-center-crop':
      if (resize.shorterSide < spec.width || resize.shorterSide < spec.height) {
        throw new RangeError(
          `shorterSide ${resize.shorterSide} is smaller than the ${spec.width}x${spec.height} crop of the input spec`,
        );
      }
      {
        const short = Math.min(width, height);
        const cap = Math.max(1, Math.ceil(short * MAX_OUTSIDE_ASPECT));
        const cw = Math.min(width, cap);
        const ch = Math.min(height, cap);
        const preCrop =
          cw < width || ch < height
            ? { left: Math.floor((width - cw) / 2), top: Math.floor((height - ch) / 2), width: cw, height: ch }
            : undefined;
        return {
          kind: 'outside-crop',
          side: resize.shorterSide,
          outWidth: spec.width,
          outHeight: spec.height,
          ...(preCrop !== undefined && { preCrop }),
        };
      }
  }
}

