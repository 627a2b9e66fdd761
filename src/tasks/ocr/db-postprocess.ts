/**
 * DB (differentiable binarization) post-processing of a text-detection probability map, after PaddleOCR's
 * `DBPostProcess` (score_mode 'fast', box_type 'quad', no dilation) followed by `TextDetector.filter_tag_det_res`
 * and `TextSystem.sorted_boxes`.
 *
 * Pure JS, framework-free; it runs on whichever thread calls it and keeps no state between calls. One call
 * handles one image: for a batch output `[N, 1, H, W]`, pass `data.subarray(n * H * W, (n + 1) * H * W)`.
 *
 * Where this differs from PaddleOCR (all within about a pixel on real maps):
 * - regions are 8-connected components of the binary map rather than OpenCV contours. RETR_LIST also returns the
 *   inner contours of holes, which PaddleOCR turns into extra (usually low-scoring) candidates; we do not.
 *   Candidates are taken in raster order (top-left first), so `maxCandidates` may keep a different subset.
 * - the unclip is done analytically: offsetting a rectangle with round joins and taking the min-area rectangle
 *   again gives the rectangle grown by d on each side. pyclipper works on integer coordinates, so PaddleOCR's
 *   result can differ by up to a pixel.
 */
import type { ImageTransform } from '../../core/types.js';

export type Point = [number, number];
export type Quad = [Point, Point, Point, Point];

export interface TextBox {
  /** Corners in original-image pixels (integers), clockwise from the top-left: tl, tr, br, bl. */
  polygon: Quad;
  /** Mean probability inside the (pre-unclip) box. */
  score: number;
}

/** One image's probability map, row-major `height x width`. */
export interface ProbabilityMap {
  data: Float32Array;
  width: number;
  height: number;
}

export interface DbOptions {
  /** Pixels with probability above this are text (PaddleOCR det_db_thresh). */
  binaryThreshold: number;
  /** Boxes whose mean probability is below this are dropped (det_db_box_thresh). */
  boxThreshold: number;
  /** At most this many regions are examined (max_candidates). */
  maxCandidates: number;
  /** Unclip distance = area * unclipRatio / perimeter (det_db_unclip_ratio). */
  unclipRatio: number;
  /** Boxes whose short side is below this (in map pixels) are dropped; after unclip, below minSize + 2. */
  minSize: number;
}

/** PaddleOCR's inference defaults (tools/infer/utility.py and DBPostProcess). */
export const DB_DEFAULTS: Readonly<DbOptions> = Object.freeze({
  binaryThreshold: 0.3,
  boxThreshold: 0.6,
  maxCandidates: 1000,
  unclipRatio: 1.5,
  minSize: 3,
});

/** A rotated rectangle: corners in order around it, and its side lengths. */
interface RotatedRect {
  corners: Quad;
  center: Point;
  /** Unit vectors along the two sides. */
  u: Point;
  v: Point;
  /** Side lengths along u and v. */
  width: number;
  height: number;
}

/**
 * The top-left `width` x `height` of a map: the image's own part of a map computed at a larger (bucket) size, the
 * rest being padding. Only that part enters the box search, so no box comes from the padding and a region that
 * reaches the padding is cut at the image's edge, as on a map of the image's own size. Returns `map` itself where
 * it has that size already, else a copy.
 */
export function topLeftRegion(map: ProbabilityMap, width: number, height: number): ProbabilityMap {
  if (map.width === width && map.height === height) return map;
  if (width > map.width || height > map.height) {
    throw new RangeError(`a ${width}x${height} region does not fit a ${map.width}x${map.height} map`);
  }
  const data = new Float32Array(width * height);
  for (let y = 0; y < height; y++) data.set(map.data.subarray(y * map.width, y * map.width + width), y * width);
  return { data, width, height };
}

export function dbPostprocess(
  map: ProbabilityMap,
  transform: ImageTransform,
  options: Partial<DbOptions> = {},
): TextBox[] {
  const opts: DbOptions = { ...DB_DEFAULTS, ...options };
  const { data, width, height } = map;
  if (data.length < width * height) {
    throw new RangeError(`probability map holds ${data.length} values, ${width}x${height} needs ${width * height}`);
  }
  const boxes: TextBox[] = [];
  const outW = transform.originalWidth;
  const outH = transform.originalHeight;

  for (const hull of regionHulls(data, width, height, opts.binaryThreshold, opts.maxCandidates)) {
    const rect = minAreaRect(hull);
    if (Math.min(rect.width, rect.height) < opts.minSize) continue;
    const score = boxScoreFast(data, width, height, rect.corners);
    if (score < opts.boxThreshold) continue;

    const area = rect.width * rect.height;
    const perimeter = 2 * (rect.width + rect.height);
    const d = perimeter > 0 ? (area * opts.unclipRatio) / perimeter : 0;
    const grown = growRect(rect, d);
    if (Math.min(grown.width, grown.height) < opts.minSize + 2) continue;

    // Map to original pixels: PaddleOCR rounds (halves to even) and clips to [0, size]; filter_tag_det_res then
    // clips again to [0, size - 1].
    const mapped = grown.corners.map(([x, y]): Point => [
      clamp(roundHalfEven((x - transform.offsetX) / transform.scaleX), 0, outW - 1),
      clamp(roundHalfEven((y - transform.offsetY) / transform.scaleY), 0, outH - 1),
    ]);
    const polygon = orderPointsClockwise(mapped);
    const rectWidth = Math.trunc(dist(polygon[0], polygon[1]));
    const rectHeight = Math.trunc(dist(polygon[0], polygon[3]));
    if (rectWidth <= 3 || rectHeight <= 3) continue;
    boxes.push({ polygon, score });
  }
  return sortBoxes(boxes);
}

/**
 * Labels the 8-connected components of `prob > threshold` and yields the convex hull of each one's pixel centres,
 * in raster order of each component's first pixel. Only each row's leftmost and rightmost pixels can be hull
 * vertices, so those are all that is kept.
 */
function* regionHulls(
  data: Float32Array,
  width: number,
  height: number,
  threshold: number,
  maxCandidates: number,
): Generator<Point[]> {
  const n = width * height;
  // 0: background or visited; 1: unvisited foreground.
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = (data[i] as number) > threshold ? 1 : 0;
  const queue = new Int32Array(n);
  let candidates = 0;

  for (let seed = 0; seed < n && candidates < maxCandidates; seed++) {
    if (mask[seed] === 0) continue;
    candidates++;
    // Breadth-first fill; the component's pixels end up in queue[0, tail).
    let head = 0;
    let tail = 0;
    queue[tail++] = seed;
    mask[seed] = 0;
    let minY = Math.floor(seed / width);
    let maxY = minY;
    while (head < tail) {
      const p = queue[head++] as number;
      const py = Math.floor(p / width);
      const px = p - py * width;
      if (py > maxY) maxY = py;
      if (py < minY) minY = py;
      const y0 = py > 0 ? py - 1 : py;
      const y1 = py < height - 1 ? py + 1 : py;
      const x0 = px > 0 ? px - 1 : px;
      const x1 = px < width - 1 ? px + 1 : px;
      for (let y = y0; y <= y1; y++) {
        for (let x = x0; x <= x1; x++) {
          const q = y * width + x;
          if (mask[q] === 1) {
            mask[q] = 0;
            queue[tail++] = q;
          }
        }
      }
    }

    const rows = maxY - minY + 1;
    const left = new Int32Array(rows).fill(width);
    const right = new Int32Array(rows).fill(-1);
    for (let i = 0; i < tail; i++) {
      const p = queue[i] as number;
      const y = Math.floor(p / width);
      const x = p - y * width;
      const r = y - minY;
      if (x < (left[r] as number)) left[r] = x;
      if (x > (right[r] as number)) right[r] = x;
    }
    const points: Point[] = [];
    for (let r = 0; r < rows; r++) {
      const l = left[r] as number;
      const rt = right[r] as number;
      if (rt < 0) continue;
      points.push([l, r + minY]);
      if (rt !== l) points.push([rt, r + minY]);
    }
    yield convexHull(points);
  }
}

/** Andrew's monotone chain; counter-clockwise in image coordinates' math sense, collinear points dropped. */
export function convexHull(input: readonly Point[]): Point[] {
  const pts = [...input].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (pts.length <= 2) return pts;
  const cross = (o: Point, a: Point, b: Point): number => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower: Point[] = [];
  for (const p of pts) {
    while (lower.length >= 2 && cross(lower[lower.length - 2] as Point, lower[lower.length - 1] as Point, p) <= 0) {
      lower.pop();
    }
    lower.push(p);
  }
  const upper: Point[] = [];
  for (let i = pts.length - 1; i >= 0; i--) {
    const p = pts[i] as Point;
    while (upper.length >= 2 && cross(upper[upper.length - 2] as Point, upper[upper.length - 1] as Point, p) <= 0) {
      upper.pop();
    }
    upper.push(p);
  }
  lower.pop();
  upper.pop();
  return lower.concat(upper);
}

/**
 * Minimum-area enclosing rectangle of a convex hull (rotating calipers: the optimum has a side on a hull edge).
 * Degenerate hulls (a point or a segment) give a rectangle with a zero side.
 */
function minAreaRect(hull: readonly Point[]): RotatedRect {
  const first = hull[0];
  if (first === undefined) throw new RangeError('empty hull');
  if (hull.length === 1) return rectFrom([1, 0], [0, 1], first[0], first[0], first[1], first[1]);

  let best: { u: Point; v: Point; minU: number; maxU: number; minV: number; maxV: number; area: number } | undefined;
  for (let i = 0; i < hull.length; i++) {
    const a = hull[i] as Point;
    const b = hull[(i + 1) % hull.length] as Point;
    const len = Math.hypot(b[0] - a[0], b[1] - a[1]);
    if (len === 0) continue;
    const u: Point = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
    const v: Point = [-u[1], u[0]];
    let minU = Infinity;
    let maxU = -Infinity;
    let minV = Infinity;
    let maxV = -Infinity;
    for (const p of hull) {
      const pu = p[0] * u[0] + p[1] * u[1];
      const pv = p[0] * v[0] + p[1] * v[1];
      if (pu < minU) minU = pu;
      if (pu > maxU) maxU = pu;
      if (pv < minV) minV = pv;
      if (pv > maxV) maxV = pv;
    }
    const area = (maxU - minU) * (maxV - minV);
    if (best === undefined || area < best.area - 1e-9) best = { u, v, minU, maxU, minV, maxV, area };
  }
  if (best === undefined) return rectFrom([1, 0], [0, 1], first[0], first[0], first[1], first[1]);
  return rectFrom(best.u, best.v, best.minU, best.maxU, best.minV, best.maxV);
}

function rectFrom(u: Point, v: Point, minU: number, maxU: number, minV: number, maxV: number): RotatedRect {
  const at = (su: number, sv: number): Point => [su * u[0] + sv * v[0], su * u[1] + sv * v[1]];
  return {
    corners: [at(minU, minV), at(maxU, minV), at(maxU, maxV), at(minU, maxV)],
    center: at((minU + maxU) / 2, (minV + maxV) / 2),
    u,
    v,
    width: maxU - minU,
    height: maxV - minV,
  };
}

/** The rectangle grown by d on every side (the min-area rectangle of its round-joined offset). */
function growRect(rect: RotatedRect, d: number): RotatedRect {
  const cu = rect.center[0] * rect.u[0] + rect.center[1] * rect.u[1];
  const cv = rect.center[0] * rect.v[0] + rect.center[1] * rect.v[1];
  const hw = rect.width / 2 + d;
  const hh = rect.height / 2 + d;
  return rectFrom(rect.u, rect.v, cu - hw, cu + hw, cv - hh, cv + hh);
}

/**
 * PaddleOCR box_score_fast: the mean of the map over the pixels of the box's bounding area that a filled polygon
 * covers, with the polygon's corners truncated to integers as `astype(int32)` does. The polygon is convex, so each
 * row is one span; pixels on its edges count.
 */
function boxScoreFast(data: Float32Array, width: number, height: number, corners: Quad): number {
  const xs = corners.map((p) => p[0]);
  const ys = corners.map((p) => p[1]);
  const xmin = clamp(Math.floor(Math.min(...xs)), 0, width - 1);
  const xmax = clamp(Math.ceil(Math.max(...xs)), 0, width - 1);
  const ymin = clamp(Math.floor(Math.min(...ys)), 0, height - 1);
  const ymax = clamp(Math.ceil(Math.max(...ys)), 0, height - 1);
  const poly = corners.map(([x, y]): Point => [Math.trunc(x - xmin) + xmin, Math.trunc(y - ymin) + ymin]);

  let sum = 0;
  let count = 0;
  for (let y = ymin; y <= ymax; y++) {
    let l = Infinity;
    let r = -Infinity;
    for (let i = 0; i < poly.length; i++) {
      const a = poly[i] as Point;
      const b = poly[(i + 1) % poly.length] as Point;
      if (a[1] === b[1]) {
        if (a[1] === y) {
          l = Math.min(l, a[0], b[0]);
          r = Math.max(r, a[0], b[0]);
        }
      } else if (y >= Math.min(a[1], b[1]) && y <= Math.max(a[1], b[1])) {
        const x = a[0] + ((y - a[1]) * (b[0] - a[0])) / (b[1] - a[1]);
        l = Math.min(l, x);
        r = Math.max(r, x);
      }
    }
    if (l > r) continue;
    const x0 = Math.max(xmin, Math.ceil(l - 1e-9));
    const x1 = Math.min(xmax, Math.floor(r + 1e-9));
    const row = y * width;
    for (let x = x0; x <= x1; x++) {
      sum += data[row + x] as number;
      count++;
    }
  }
  return count === 0 ? 0 : sum / count;
}

/**
 * PaddleOCR order_points_clockwise: top-left has the smallest x + y, bottom-right the largest; of the other two,
 * top-right has the smaller y - x.
 */
export function orderPointsClockwise(points: readonly Point[]): Quad {
  if (points.length !== 4) throw new RangeError(`expected 4 points, got ${points.length}`);
  const sums = points.map((p) => p[0] + p[1]);
  const iMin = argMin(sums);
  const iMax = argMax(sums);
  const rest = points.filter((_, i) => i !== iMin && i !== iMax);
  // As with np.delete, three points remain when argmin == argmax (all sums equal).
  const diffs = rest.map((p) => p[1] - p[0]);
  const tr = rest[argMin(diffs)] as Point;
  const bl = rest[argMax(diffs)] as Point;
  return [[...(points[iMin] as Point)], [...tr], [...(points[iMax] as Point)], [...bl]];
}

/**
 * PaddleOCR sorted_boxes: by the top-left corner's y, then x; then a box whose top-left is within 10 px vertically
 * of the previous one's and further left moves before it (one bubble pass per box), so a line reads left to right.
 */
export function sortBoxes<B extends { polygon: Quad }>(boxes: readonly B[]): B[] {
  const sorted = [...boxes].sort(
    (p, q) => p.polygon[0][1] - q.polygon[0][1] || p.polygon[0][0] - q.polygon[0][0],
  );
  for (let i = 0; i < sorted.length - 1; i++) {
    for (let j = i; j >= 0; j--) {
      const cur = sorted[j] as B;
      const next = sorted[j + 1] as B;
      if (Math.abs(next.polygon[0][1] - cur.polygon[0][1]) < 10 && next.polygon[0][0] < cur.polygon[0][0]) {
        sorted[j] = next;
        sorted[j + 1] = cur;
      } else {
        break;
      }
    }
  }
  return sorted;
}

/** Python's round(): halves go to the even neighbour (numpy's np.round does the same). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function clamp(x: number, lo: number, hi: number): number {
  return x < lo ? lo : x > hi ? hi : x;
}

function dist(a: Point, b: Point): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1]);
}

function argMin(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if ((xs[i] as number) < (xs[best] as number)) best = i;
  return best;
}

function argMax(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if ((xs[i] as number) > (xs[best] as number)) best = i;
  return best;
}
