import t from 'tap';
import type { ImageTransform } from '../../src/core/types.js';
import { boxToOriginal, iou, nms } from '../../src/tasks/detection/nms.js';
import type { Box, Detection, DetectionFilter } from '../../src/tasks/detection/nms.js';
import { decodeSsd } from '../../src/tasks/detection/ssd.js';
import { decodeYolox, yoloxAnchorCount } from '../../src/tasks/detection/yolox.js';
import { readLabels } from '../../src/tasks/labels.js';
import { modelPath, readTensorProto, sharedTestOptions } from '../helpers/shared.js';

const box = (x1: number, y1: number, x2: number, y2: number): Box => ({ x1, y1, x2, y2 });
const det = (index: number, score: number, b: Box): Detection => ({ label: `c${index}`, index, score, box: b });
const near = (a: number, b: number, tol: number): boolean => Math.abs(a - b) <= tol;
const corners = (b: Box): number[] => [b.x1, b.y1, b.x2, b.y2];
const describe = (d: Detection, boxDigits: number): string =>
  `${d.label} ${d.score.toFixed(4)} [${corners(d.box).map((v) => v.toFixed(boxDigits)).join(',')}]`;

function transformOf(originalWidth: number, originalHeight: number, scale: number, offsetY = 0): ImageTransform {
  return { originalWidth, originalHeight, scaleX: scale, scaleY: scale, offsetX: 0, offsetY };
}

/** person_astronaut.png is 512x512 (images/SOURCES.md); UltraFace stretches it to 320x240. */
const stretch512: ImageTransform = {
  originalWidth: 512,
  originalHeight: 512,
  scaleX: 320 / 512,
  scaleY: 240 / 512,
  offsetX: 0,
  offsetY: 0,
};

/** street_notice_sign.jpg (800x600) letterboxed at the top-left of 416x416: r = min(416/600, 416/800) = 0.52. */
const letterbox052 = transformOf(800, 600, 0.52);

t.test('IoU', async (t) => {
  t.equal(iou(box(0, 0, 10, 10), box(0, 0, 10, 10)), 1, 'identical boxes');
  t.equal(iou(box(0, 0, 10, 10), box(20, 20, 30, 30)), 0, 'disjoint boxes');
  t.equal(iou(box(0, 0, 10, 10), box(10, 0, 20, 10)), 0, 'boxes that share an edge');
  t.equal(iou(box(0, 0, 10, 10), box(10, 10, 20, 20)), 0, 'boxes that share a corner');
  t.ok(near(iou(box(0, 0, 10, 10), box(5, 0, 15, 10)), 50 / 150, 1e-12), 'half overlap = 1/3');
  t.equal(iou(box(0, 0, 10, 10), box(2, 2, 7, 7)), 0.25, 'contained box: inner area / outer area');
  t.equal(iou(box(5, 5, 5, 5), box(5, 5, 5, 5)), 0, 'two empty boxes');
  t.equal(iou(box(0, 0, 10, 10), box(5, 5, 5, 8)), 0, 'a zero-width box');
  t.equal(iou(box(10, 10, 0, 0), box(0, 0, 10, 10)), 0, 'an inverted box has no area');
  t.equal(iou(box(0, 0, 10, 10), box(5, 0, 15, 10)), iou(box(5, 0, 15, 10), box(0, 0, 10, 10)), 'symmetric');
});

t.test('NMS suppresses a lower-scored overlapping box of the same class', async (t) => {
  const cands = [det(0, 0.6, box(1, 0, 11, 10)), det(0, 0.9, box(0, 0, 10, 10)), det(0, 0.5, box(50, 50, 60, 60))];
  const kept = nms(cands, { iouThreshold: 0.45, maxDetections: 100 });
  t.same(kept.map((d) => d.score), [0.9, 0.5]);
});

t.test('NMS keeps a box whose IoU equals the threshold and suppresses one just above', async (t) => {
  const a = det(0, 0.9, box(0, 0, 10, 10));
  const third = det(0, 0.8, box(5, 0, 15, 10)); // IoU 1/3 with a
  t.equal(nms([a, third], { iouThreshold: 1 / 3, maxDetections: 10 }).length, 2);
  t.equal(nms([a, third], { iouThreshold: 0.33, maxDetections: 10 }).length, 1);
});

t.test('NMS is class-aware by default and class-agnostic on request', async (t) => {
  const cands = [det(16, 0.66, box(0, 0, 100, 100)), det(17, 0.56, box(1, 1, 100, 100))];
  const aware = nms(cands, { iouThreshold: 0.45, maxDetections: 10 });
  t.same(aware.map((d) => d.index), [16, 17], 'dog and horse on the same box both stay');
  const agnostic = nms(cands, { iouThreshold: 0.45, maxDetections: 10, classAgnostic: true });
  t.same(agnostic.map((d) => d.index), [16]);
});

t.test('NMS caps at maxDetections, keeping the highest scores, sorted descending', async (t) => {
  const cands = [0.3, 0.8, 0.5, 0.9, 0.7].map((s, i) => det(0, s, box(i * 20, 0, i * 20 + 10, 10)));
  const before = cands.map((d) => d.score);
  const kept = nms(cands, { iouThreshold: 0.5, maxDetections: 3 });
  t.same(kept.map((d) => d.score), [0.9, 0.8, 0.7]);
  t.same(cands.map((d) => d.score), before, 'the input is not reordered');
  t.same(nms(cands, { iouThreshold: 0.5, maxDetections: 0 }), []);
  t.same(nms([], { iouThreshold: 0.5, maxDetections: 10 }), []);
});

t.test('a suppressed box does not suppress others (greedy, not transitive)', async (t) => {
  // b overlaps a and c; a suppresses b; c overlaps only b, so c stays.
  const a = det(0, 0.9, box(0, 0, 10, 10));
  const b = det(0, 0.8, box(4, 0, 14, 10));
  const c = det(0, 0.7, box(9, 0, 19, 10));
  t.same(nms([a, b, c], { iouThreshold: 0.3, maxDetections: 10 }).map((d) => d.score), [0.9, 0.7]);
});

t.test('boxes go back to original pixels through the letterbox transform and are clipped', async (t) => {
  t.same(boxToOriginal(52, 52, 104, 156, letterbox052), box(100, 100, 200, 300), 'x / 0.52');
  t.same(boxToOriginal(-10, 300, 430, 330, letterbox052), box(0, 300 / 0.52, 800, 600), 'clipped to 800x600');
  t.equal(boxToOriginal(10, 320, 50, 400, letterbox052), undefined, 'a box wholly in the padding below the image');
  const centred = transformOf(200, 100, 2, 100);
  t.same(boxToOriginal(20, 120, 60, 160, centred), box(10, 10, 30, 30), 'offset subtracted before dividing');
  t.equal(boxToOriginal(Number.NaN, 0, 10, 10, letterbox052), undefined, 'NaN coordinates');
});

/** A tiny YOLOX head: 64x32 input, strides 8/16/32 -> 8x4 + 4x2 + 2x1 = 42 anchors, 3 classes. */
function tinyYolox(): { data: Float32Array; rows: number; cols: number } {
  const rows = 42;
  const cols = 8;
  const data = new Float32Array(rows * cols);
  // Stride 16, (gx, gy) = (1, 1): row 32 + 1*4 + 1 = 37. cx = (0.5+1)*16 = 24, cy = 24, w = 2*16 = 32, h = 16.
  data.set([0.5, 0.5, Math.log(2), 0, 0.9, 0.2, 0.8, 0.5], 37 * cols);
  // Stride 8, (gx, gy) = (0, 0): obj below the threshold, so nothing whatever its class scores.
  data.set([0, 0, 0, 0, 0.29, 1, 1, 1], 0);
  return { data, rows, cols };
}

const halfScale = transformOf(128, 64, 0.5);
const filter = (over: Partial<DetectionFilter> = {}): DetectionFilter => ({
  scoreThreshold: 0.3,
  iouThreshold: 0.45,
  maxDetections: 100,
  ...over,
});

t.test('YOLOX decoding: grid order, box formula, one candidate per class above the threshold', async (t) => {
  t.equal(yoloxAnchorCount(64, 32), 42);
  t.equal(yoloxAnchorCount(416, 416), 3549);
  const { data, rows, cols } = tinyYolox();
  const dets = decodeYolox(data, rows, cols, { inputWidth: 64, inputHeight: 32 }, halfScale, filter(), ['a', 'b', 'c']);
  t.equal(dets.length, 2, 'score 0.72 (b) and 0.45 (c); a = 0.18 is below 0.3');
  t.equal(dets[0]?.label, 'b');
  t.ok(near(dets[0]?.score ?? 0, 0.72, 1e-6));
  t.equal(dets[1]?.label, 'c');
  t.ok(near(dets[1]?.score ?? 0, 0.45, 1e-6));
  // Tensor box (8, 16)-(40, 32) at half scale -> (16, 32)-(80, 64).
  const b = dets[0]?.box;
  t.ok(b !== undefined && near(b.x1, 16, 1e-4) && near(b.y1, 32, 1e-4) && near(b.x2, 80, 1e-4) && near(b.y2, 64, 1e-4));
});

t.test('YOLOX decoding honours classAgnostic, classes and maxDetections', async (t) => {
  const { data, rows, cols } = tinyYolox();
  const opts = { inputWidth: 64, inputHeight: 32, strides: [8, 16, 32] };
  const labels = ['a', 'b', 'c'];
  const agnostic = decodeYolox(data, rows, cols, opts, halfScale, filter({ classAgnostic: true }), labels);
  t.same(agnostic.map((d) => d.label), ['b']);
  const onlyC = decodeYolox(data, rows, cols, opts, halfScale, filter({ classes: new Set([2]) }), labels);
  t.same(onlyC.map((d) => d.label), ['c']);
  const one = decodeYolox(data, rows, cols, opts, halfScale, filter({ maxDetections: 1 }), labels);
  t.same(one.map((d) => d.label), ['b']);
  const low = decodeYolox(data, rows, cols, opts, halfScale, filter({ scoreThreshold: 0.1 }), []);
  t.same(
    low.map((d) => d.label),
    ['1', '2', '0', '1', '2', '0'],
    'unlabelled classes are named by index; the obj 0.29 anchor now passes, its tied scores in class order',
  );
});

t.test('YOLOX decoding rejects an output that does not match the grids', async (t) => {
  const { data, cols } = tinyYolox();
  const opts = { inputWidth: 64, inputHeight: 32 };
  t.throws(() => decodeYolox(data, 41, cols, opts, halfScale, filter(), []), RangeError, 'row count');
  t.throws(() => decodeYolox(data.subarray(8), 42, cols, opts, halfScale, filter(), []), RangeError, 'short data');
});

t.test('SSD decoding skips background, maps normalised boxes through the transform and clips', async (t) => {
  // 3 anchors x [background, face].
  const scores = Float32Array.from([0.05, 0.95, 0.99, 0.01, 0.2, 0.8]);
  const boxes = Float32Array.from([0.25, 0.25, 0.5, 0.5, 0, 0, 1, 1, 0.9, 0.9, 1.2, 1.1]);
  const opts = { inputWidth: 320, inputHeight: 240 };
  const f = filter({ scoreThreshold: 0.7, iouThreshold: 0.3 });
  const dets = decodeSsd(scores, boxes, 3, 2, opts, stretch512, f, ['background', 'face']);
  t.equal(dets.length, 2, 'the background-only anchor gives nothing');
  t.same(
    dets.map((d) => [d.label, d.index]),
    [
      ['face', 1],
      ['face', 1],
    ],
  );
  const [first, second] = dets;
  t.ok(first !== undefined && near(first.score, 0.95, 1e-6));
  t.ok(first !== undefined && near(first.box.x1, 128, 1e-3) && near(first.box.y2, 256, 1e-3), 'x * originalWidth');
  t.ok(second !== undefined && second.box.x2 === 512 && second.box.y2 === 512, 'clipped to the image');
  t.throws(() => decodeSsd(scores, boxes, 4, 2, opts, stretch512, f, []), RangeError, 'fewer values than anchors');
});

const yolox = 'models/yolox-nano';

t.test(
  'YOLOX-Nano on street_notice_sign.jpg: person 0.91, car 0.88, person 0.82, potted plant 0.34',
  sharedTestOptions(`${yolox}/labels.txt`, `${yolox}/test_data_set_0/output_0.pb`),
  async (t) => {
    const labels = await readLabels(modelPath('yolox-nano', 'labels.txt'));
    const out = readTensorProto(modelPath('yolox-nano', 'test_data_set_0/output_0.pb'));
    t.same(out.dims, [1, 3549, 85]);
    const opts = { inputWidth: 416, inputHeight: 416 };
    const f = filter({ scoreThreshold: 0.3, iouThreshold: 0.45 });
    const dets = decodeYolox(out.data, 3549, 85, opts, letterbox052, f, labels);
    t.comment(dets.map((d) => describe(d, 0)).join('; '));
    const want: [string, number][] = [
      ['person', 0.91],
      ['car', 0.88],
      ['person', 0.82],
      ['potted plant', 0.34],
    ];
    t.equal(dets.length, want.length);
    want.forEach(([label, score], i) => {
      t.equal(dets[i]?.label, label);
      t.ok(near(dets[i]?.score ?? 0, score, 0.02), `${label} ${dets[i]?.score} ~ ${score}`);
    });
    for (const d of dets) {
      const { x1, y1, x2, y2 } = d.box;
      t.ok(x1 >= 0 && y1 >= 0 && x2 <= 800 && y2 <= 600 && x2 > x1 && y2 > y1, `${d.label} box inside the image`);
    }

    // The hot path: time a few decodes of the 3549x85 output (reported, not asserted).
    const runs = 200;
    const start = process.hrtime.bigint();
    for (let i = 0; i < runs; i++) decodeYolox(out.data, 3549, 85, opts, letterbox052, f, labels);
    t.comment(`decodeYolox 3549x85: ${(Number(process.hrtime.bigint() - start) / 1e6 / runs).toFixed(3)} ms per image`);
  },
);

const ultraface = 'models/ultraface-rfb-320';

t.test(
  'UltraFace on person_astronaut.png: one face ~1.00 near [180,62,268,174]',
  sharedTestOptions(
    `${ultraface}/labels.txt`,
    `${ultraface}/test_data_set_0/output_0.pb`,
    `${ultraface}/test_data_set_0/output_1.pb`,
  ),
  async (t) => {
    const labels = await readLabels(modelPath('ultraface-rfb-320', 'labels.txt'));
    const scores = readTensorProto(modelPath('ultraface-rfb-320', 'test_data_set_0/output_0.pb'));
    const boxes = readTensorProto(modelPath('ultraface-rfb-320', 'test_data_set_0/output_1.pb'));
    t.same(scores.dims, [1, 4420, 2]);
    t.same(boxes.dims, [1, 4420, 4]);
    const dets = decodeSsd(
      scores.data,
      boxes.data,
      4420,
      2,
      { inputWidth: 320, inputHeight: 240 },
      stretch512,
      filter({ scoreThreshold: 0.7, iouThreshold: 0.3 }),
      labels,
    );
    t.comment(dets.map((d) => describe(d, 1)).join('; '));
    t.equal(dets.length, 1);
    const face = dets[0];
    t.equal(face?.label, 'face');
    t.ok(near(face?.score ?? 0, 1, 0.005));
    const want = [180, 62, 268, 174];
    const got = face === undefined ? [] : corners(face.box);
    const close = got.length === 4 && got.every((v, i) => near(v, want[i] as number, 3));
    t.ok(close, `box ${got.join(',')} within 3 px of ${want.join(',')}`);
  },
);
