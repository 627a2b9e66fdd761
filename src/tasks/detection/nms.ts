/**
 * Detection results and the steps every detector head shares: mapping boxes back to original-image pixels,
 * IoU, and greedy hard non-maximum suppression.
 */
import type { ImageTransform } from '../../core/types.js';

/** Corners in original-image pixels, x1 <= x2 and y1 <= y2. */
export interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

export interface Detection {
  label: string;
  /** Class index as the model numbers it (for SSD heads: the score column, background = 0). */
  index: number;
  score: number;
  box: Box;
}

export interface DetectionFilter {
  /** Keep candidates with score >= this. */
  scoreThreshold: number;
  /** Suppress a candidate whose IoU with a kept detection (of the same class, unless class-agnostic) is > this. */
  iouThreshold: number;
  /** Keep at most this many detections, the highest scores. */
  maxDetections: number;
  /** Only these class indices; all when absent. */
  classes?: ReadonlySet<number>;
  /** Suppress across classes (one box per object whatever its class); default false: per class. */
  classAgnostic?: boolean;
}

export type NmsOptions = Pick<DetectionFilter, 'iouThreshold' | 'maxDetections' | 'classAgnostic'>;

/** Area of a box; 0 for an empty or inverted one. */
export function boxArea(b: Box): number {
  return Math.max(0, b.x2 - b.x1) * Math.max(0, b.y2 - b.y1);
}

/** Intersection over union in [0, 1]; 0 when the boxes only touch, or when both are empty. */
export function iou(a: Box, b: Box): number {
  const iw = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const ih = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  if (iw <= 0 || ih <= 0) return 0;
  const inter = iw * ih;
  const union = boxArea(a) + boxArea(b) - inter;
  return union > 0 ? inter / union : 0;
}

/**
 * Greedy hard NMS (as in the YOLOX and UltraFace demos): visit candidates by score, highest first, and keep one
 * unless it overlaps a kept detection by IoU > `iouThreshold`. Class-aware by default: only detections of the
 * same class suppress each other. Stops once `maxDetections` are kept. The result is sorted by score
 * descending; equal scores keep lower class index first, then input order. `candidates` is not modified.
 */
export function nms(candidates: readonly Detection[], opts: NmsOptions): Detection[] {
  const limit = Math.floor(opts.maxDetections);
  if (!(limit > 0) || candidates.length === 0) return [];
  const order = candidates.map((_, i) => i);
  order.sort((i, j) => {
    const a = candidates[i] as Detection;
    const b = candidates[j] as Detection;
    return b.score - a.score || a.index - b.index || i - j;
  });
  const kept: Detection[] = [];
  // Kept boxes per class (or all under one key when class-agnostic): each candidate is checked against its own.
  const keptByClass = new Map<number, Box[]>();
  for (const i of order) {
    const d = candidates[i] as Detection;
    const key = opts.classAgnostic === true ? 0 : d.index;
    let group = keptByClass.get(key);
    if (group === undefined) {
      group = [];
      keptByClass.set(key, group);
    }
    if (group.some((k) => iou(k, d.box) > opts.iouThreshold)) continue;
    group.push(d.box);
    kept.push(d);
    if (kept.length >= limit) break;
  }
  return kept;
}

/**
 * The last step of every head: Ocular's NMS where the head's candidates are raw (`suppress`), else (an end-to-end
 * head, already suppressed in its graph) only the order and the cap NMS would give: score descending, lower class
 * first, then input order; at most `maxDetections`.
 */
export function finishDetections(candidates: readonly Detection[], opts: NmsOptions, suppress: boolean): Detection[] {
  if (suppress) return nms(candidates, opts);
  const limit = Math.floor(opts.maxDetections);
  if (!(limit > 0)) return [];
  const order = candidates.map((_, i) => i);
  order.sort((i, j) => {
    const a = candidates[i] as Detection;
    const b = candidates[j] as Detection;
    return b.score - a.score || a.index - b.index || i - j;
  });
  return order.slice(0, limit).map((i) => candidates[i] as Detection);
}

/**
 * Maps a box from tensor pixels to original-image pixels (inverse of tensor = original * scale + offset) and
 * clips it to [0, originalWidth] x [0, originalHeight]. Returns undefined when nothing of it is left inside
 * the image (a box that lies in letterbox padding), so decoders drop it before NMS.
 */
export function boxToOriginal(
  tx1: number,
  ty1: number,
  tx2: number,
  ty2: number,
  transform: ImageTransform,
): Box | undefined {
  const { scaleX, scaleY, offsetX, offsetY, originalWidth, originalHeight } = transform;
  const x1 = clamp((tx1 - offsetX) / scaleX, originalWidth);
  const y1 = clamp((ty1 - offsetY) / scaleY, originalHeight);
  const x2 = clamp((tx2 - offsetX) / scaleX, originalWidth);
  const y2 = clamp((ty2 - offsetY) / scaleY, originalHeight);
  // Also false for NaN coordinates.
  if (!(x2 > x1 && y2 > y1)) return undefined;
  return { x1, y1, x2, y2 };
}

function clamp(v: number, max: number): number {
  return v < 0 ? 0 : v > max ? max : v;
}

/**
 * 1 for the classes to keep, or undefined for all. Decoders build it once per call so their hot loop does no
 * Set lookups.
 */
export function classMask(numClasses: number, classes: ReadonlySet<number> | undefined): Uint8Array | undefined {
  if (classes === undefined) return undefined;
  const mask = new Uint8Array(numClasses);
  for (const c of classes) if (Number.isInteger(c) && c >= 0 && c < numClasses) mask[c] = 1;
  return mask;
}
