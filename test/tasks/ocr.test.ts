import t, { type Test } from 'tap';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import type { ImageTransform } from '../../src/core/types.js';
import { readLabels } from '../../src/tasks/labels.js';
import { RECOGNIZER_DEFAULTS, cropTextLine, resizeForRecognizer, type RgbImage } from '../../src/tasks/ocr/crop.js';
import { ctcDecode, type RecognizedText } from '../../src/tasks/ocr/ctc.js';
import { DB_DEFAULTS, dbPostprocess, orderPointsClockwise, sortBoxes, type Point, type Quad, type TextBox } from '../../src/tasks/ocr/db-postprocess.js';

/** Decodes every item of a `[N, T, C]` recogniser output (the pipeline decodes each crop's own steps instead). */
function decodeEach(data: Float32Array, dims: readonly number[], labels: readonly string[]): RecognizedText[] {
  const [n, steps, classes] = dims as [number, number, number];
  const size = steps * classes;
  return Array.from({ length: n }, (_, i) => ctcDecode(data.subarray(i * size, (i + 1) * size), steps, classes, labels));
}
import { roundHalfEven } from '../../src/tasks/ocr/db-postprocess.js';
import { normalizeInto, normalizeParamsOf } from '../../src/core/runner/normalize.js';
import type { NormalizeParams } from '../../src/core/runner/normalize.js';
import { ppocrV4DetSpec } from '../fixtures/input-specs.js';
import { imagePath, modelPath, readTensorProto, sharedTestOptions } from '../helpers/shared.js';

// ---------------------------------------------------------------------------------------------------------------
// Synthetic probability maps

function identity(width: number, height: number): ImageTransform {
  return { originalWidth: width, originalHeight: height, scaleX: 1, scaleY: 1, offsetX: 0, offsetY: 0 };
}

/** Sets pixels x0..x1, y0..y1 (inclusive) to p. */
function fillRect(map: Float32Array, width: number, x0: number, y0: number, x1: number, y1: number, p: number): void {
  for (let y = y0; y <= y1; y++) map.fill(p, y * width + x0, y * width + x1 + 1);
}

/** Sets every pixel whose centre lies inside the rotated rectangle to p. */
function fillRotated(
  map: Float32Array,
  width: number,
  height: number,
  center: Point,
  halfSize: Point,
  angleRad: number,
  p: number,
): void {
  const c = Math.cos(angleRad);
  const s = Math.sin(angleRad);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const dx = x - center[0];
      const dy = y - center[1];
      if (Math.abs(dx * c + dy * s) <= halfSize[0] && Math.abs(-dx * s + dy * c) <= halfSize[1]) map[y * width + x] = p;
    }
  }
}

/** Corners tl, tr, br, bl of a rectangle given by the pixel centres at its corners, grown by the DB unclip. */
function unclipped(x0: number, y0: number, x1: number, y1: number): Quad {
  const w = x1 - x0;
  const h = y1 - y0;
  const d = (w * h * DB_DEFAULTS.unclipRatio) / (2 * (w + h));
  return [
    [x0 - d, y0 - d],
    [x1 + d, y0 - d],
    [x1 + d, y1 + d],
    [x0 - d, y1 + d],
  ];
}

function assertCorners(t: Test, actual: Quad, expected: Quad, tolerance: number, what: string): void {
  const worst = Math.max(...actual.map((p, i) => Math.hypot(p[0] - expected[i]![0], p[1] - expected[i]![1])));
  t.ok(worst <= tolerance, `${what}: corners within ${tolerance}px (worst ${worst.toFixed(2)})`, {
    actual,
    expected,
  });
}

t.test('two rectangles and a rotated one give unclipped boxes, in reading order', async (t) => {
  const width = 240;
  const height = 160;
  const map = new Float32Array(width * height);
  fillRect(map, width, 130, 20, 209, 39, 0.9); // right of the first line
  fillRect(map, width, 30, 22, 99, 41, 0.8); // same line (2 px lower), further left: read first
  fillRotated(map, width, height, [120, 110], [50, 12], (20 * Math.PI) / 180, 0.95);

  const boxes = dbPostprocess({ data: map, width, height }, identity(width, height));
  t.equal(boxes.length, 3);
  const [a, b, c] = boxes as [TextBox, TextBox, TextBox];
  const round = (q: Quad): Quad => q.map(([x, y]) => [roundHalfEven(x), roundHalfEven(y)]) as Quad;
  assertCorners(t, a.polygon, round(unclipped(30, 22, 99, 41)), 0, 'left rectangle');
  assertCorners(t, b.polygon, round(unclipped(130, 20, 209, 39)), 0, 'right rectangle');
  t.ok(Math.abs(a.score - 0.8) < 1e-6 && Math.abs(b.score - 0.9) < 1e-6, 'score = mean probability inside the box');

  // The rotated rectangle: tilted rows of pixel centres reach to within a fraction of a pixel of its edges, so the
  // min-area rectangle of the centres is about its true size (100 x 24), unlike an axis-aligned one's (less 1).
  const angle = (20 * Math.PI) / 180;
  const u: Point = [Math.cos(angle), Math.sin(angle)];
  const v: Point = [-Math.sin(angle), Math.cos(angle)];
  const w = 100;
  const h = 24;
  const d = (w * h * DB_DEFAULTS.unclipRatio) / (2 * (w + h));
  const corner = (su: number, sv: number): Point => [
    120 + su * (w / 2 + d) * u[0] + sv * (h / 2 + d) * v[0],
    110 + su * (w / 2 + d) * u[1] + sv * (h / 2 + d) * v[1],
  ];
  // Tilted down to the right: the top-left corner is the one at (-u, -v).
  assertCorners(t, c.polygon, [corner(-1, -1), corner(1, -1), corner(1, 1), corner(-1, 1)], 1, 'rotated rectangle');
  t.ok(c.score > 0.9, 'rotated box score');
});

t.test('boxes map back through the transform and are clipped to the image', async (t) => {
  const width = 128;
  const height = 64;
  const map = new Float32Array(width * height);
  fillRect(map, width, 10, 10, 69, 29, 0.9);
  fillRect(map, width, 100, 40, 127, 63, 0.9); // touches the right and bottom edges
  // The map is the original scaled by 0.5 and shifted by (4, 2) (a letterbox, say).
  const transform = { originalWidth: 240, originalHeight: 120, scaleX: 0.5, scaleY: 0.5, offsetX: 4, offsetY: 2 };
  const boxes = dbPostprocess({ data: map, width, height }, transform);
  t.equal(boxes.length, 2);
  const back = (q: Quad): Quad =>
    q.map(([x, y]) => [
      Math.min(Math.max(roundHalfEven((x - 4) / 0.5), 0), 239),
      Math.min(Math.max(roundHalfEven((y - 2) / 0.5), 0), 119),
    ]) as Quad;
  assertCorners(t, boxes[0]!.polygon, back(unclipped(10, 10, 69, 29)), 0, 'inner box');
  const clipped = boxes[1]!.polygon;
  t.ok(
    clipped.every(([x, y]) => x >= 0 && x <= 239 && y >= 0 && y <= 119),
    'edge box lies inside the original image',
  );
  t.equal(clipped[2][0], 239, 'clipped to the last column');
  t.equal(clipped[2][1], 119, 'clipped to the last row');
});

t.test('a faint region is dropped by the box threshold, and kept below it', async (t) => {
  const width = 100;
  const height = 60;
  const map = new Float32Array(width * height);
  fillRect(map, width, 10, 10, 80, 30, 0.45); // above the binary threshold, below the box threshold
  t.same(dbPostprocess({ data: map, width, height }, identity(width, height)), []);
  const kept = dbPostprocess({ data: map, width, height }, identity(width, height), { boxThreshold: 0.4 });
  t.equal(kept.length, 1);
  t.ok(Math.abs(kept[0]!.score - 0.45) < 1e-6);
  fillRect(map, width, 10, 10, 80, 30, 0.25); // below the binary threshold: no region at all
  t.same(dbPostprocess({ data: map, width, height }, identity(width, height), { boxThreshold: 0 }), []);
});

t.test('tiny and thin regions are dropped', async (t) => {
  const width = 100;
  const height = 60;
  const map = new Float32Array(width * height);
  fillRect(map, width, 5, 5, 6, 6, 0.99); // 2x2 pixels: a 1x1 rectangle of centres
  fillRect(map, width, 20, 20, 90, 21, 0.99); // 71 px long, 2 px tall: short side 1
  map[50 * width + 50] = 0.99; // one pixel
  t.same(dbPostprocess({ data: map, width, height }, identity(width, height)), []);
  // A short side of exactly minSize (4 rows of centres span 3) survives.
  fillRect(map, width, 20, 40, 90, 43, 0.99);
  t.equal(dbPostprocess({ data: map, width, height }, identity(width, height)).length, 1);
});

t.test('maxCandidates bounds the regions examined', async (t) => {
  const width = 200;
  const height = 40;
  const map = new Float32Array(width * height);
  for (let i = 0; i < 5; i++) fillRect(map, width, 10 + i * 38, 10, 40 + i * 38, 25, 0.9);
  t.equal(dbPostprocess({ data: map, width, height }, identity(width, height)).length, 5);
  t.equal(dbPostprocess({ data: map, width, height }, identity(width, height), { maxCandidates: 2 }).length, 2);
});

t.test('points are ordered clockwise from the top-left', async (t) => {
  t.same(
    orderPointsClockwise([
      [50, 40],
      [10, 10],
      [10, 40],
      [50, 10],
    ]),
    [
      [10, 10],
      [50, 10],
      [50, 40],
      [10, 40],
    ],
  );
  // A tilted quad: tl has the smallest x + y, br the largest, tr the smaller y - x.
  t.same(
    orderPointsClockwise([
      [105, 62],
      [8, 38],
      [2, 62],
      [99, 86],
    ]),
    [
      [8, 38],
      [105, 62],
      [99, 86],
      [2, 62],
    ],
  );
});

t.test('boxes sort top to bottom, and left to right within 10 px of height', async (t) => {
  const at = (x: number, y: number): { polygon: Quad; id: string } => ({
    id: `${x},${y}`,
    polygon: [
      [x, y],
      [x + 5, y],
      [x + 5, y + 5],
      [x, y + 5],
    ],
  });
  const sorted = sortBoxes([at(100, 50), at(10, 58), at(50, 5), at(10, 0), at(0, 30)]);
  t.same(
    sorted.map((b) => b.id),
    ['10,0', '50,5', '0,30', '10,58', '100,50'],
  );
});

// ---------------------------------------------------------------------------------------------------------------
// CTC

/** A [T, C] tensor whose step t puts probability `p` on class `path[t]` and spreads the rest evenly. */
function ctcTensor(path: readonly number[], classes: number, p = 0.9): Float32Array {
  const out = new Float32Array(path.length * classes).fill((1 - p) / (classes - 1));
  path.forEach((c, step) => (out[step * classes + c] = p));
  return out;
}

t.test('greedy CTC collapses repeats, drops blanks and maps the last class to a space', async (t) => {
  const labels = ['a', 'b', 'c'];
  // blank=0, a=1, b=2, c=3, space=4
  const path = [1, 1, 0, 1, 2, 4, 4, 3, 0, 0];
  const probs = ctcTensor(path, 5);
  probs[1 * 5 + 1] = 0.5; // a repeated step: not counted in the score
  probs[1 * 5 + 0] = 0.4;
  const { text, score } = ctcDecode(probs, path.length, 5, labels);
  t.equal(text, 'aab c');
  t.ok(Math.abs(score - 0.9) < 1e-6, 'score is the mean over kept characters');

  const empty = ctcDecode(ctcTensor([0, 0, 0], 5), 3, 5, labels);
  t.same(empty, { text: '', score: 0 });
  t.throws(() => ctcDecode(ctcTensor([0], 7), 1, 7, labels), RangeError, 'class count must match the labels');
  t.equal(ctcDecode(ctcTensor([1, 3], 4), 2, 4, labels).text, 'ac', 'no space class when C = n + 1');
});

const DET_DATA = 'models/ppocrv4-det/test_data_set_0/output_0.pb';
const REC_DATA = 'models/ppocrv4-rec/test_data_set_0/output_0.pb';
const REC_LABELS = 'models/ppocrv4-rec/labels.txt';

t.test('the recogniser reference output reads NOTICE', sharedTestOptions(REC_DATA, REC_LABELS), async (t) => {
  const labels = await readLabels(modelPath('ppocrv4-rec', 'labels.txt'));
  t.equal(labels.length, 6623);
  const out = readTensorProto(modelPath('ppocrv4-rec', 'test_data_set_0/output_0.pb'));
  t.same(out.dims, [1, 21, 6625]);
  const [result] = decodeEach(out.data, out.dims, labels);
  t.equal(result?.text, 'NOTICE');
  t.ok((result?.score ?? 0) > 0.9, `confident (${result?.score})`);
});

t.test('the detector reference output gives the pub sign lines', sharedTestOptions(DET_DATA), async (t) => {
  const out = readTensorProto(modelPath('ppocrv4-det', 'test_data_set_0/output_0.pb'));
  t.same(out.dims, [1, 1, 480, 640]);
  const boxes = dbPostprocess({ data: out.data, width: 640, height: 480 }, identity(640, 480));
  t.comment(boxes.map((b) => `${JSON.stringify(b.polygon)} ${b.score.toFixed(3)}`).join('\n'));
  // "priory" / "galleries" / the small line under them on the hanging sign, then the facia "priory galleries at
  // the ship" as one line (one connected region at threshold 0.3).
  t.equal(boxes.length, 4);
  const [priory, galleries, small, facia] = boxes as [TextBox, TextBox, TextBox, TextBox];
  t.ok(priory.polygon[0][1] < galleries.polygon[0][1] && galleries.polygon[0][1] < small.polygon[0][1]);
  t.ok(facia.polygon[1][0] - facia.polygon[0][0] > 300, 'the facia line is the widest');
  t.ok(facia.polygon[1][1] > facia.polygon[0][1], 'and tilts down to the right');
  for (const b of boxes) t.ok(b.score >= DB_DEFAULTS.boxThreshold);
});

// ---------------------------------------------------------------------------------------------------------------
// End to end, in process: detector -> DB -> crops -> recogniser -> CTC

// PaddleOCR subtracts mean[i] from channel i of the BGR image; in tensor order that is mean[0] on B (the fixture
// spec says the same; the reference-input test below checks it).
const DET_NORMALIZE: NormalizeParams = normalizeParamsOf(ppocrV4DetSpec);
const REC_NORMALIZE: NormalizeParams = {
  layout: 'NCHW',
  channelOrder: 'BGR',
  scale: 1 / 255,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
};

interface OcrModels {
  det: ort.InferenceSession;
  rec: ort.InferenceSession;
  labels: string[];
}

interface OcrLine {
  box: TextBox;
  /** Decoded over every timestep of the padded batch, as PaddleOCR does. */
  text: RecognizedText;
  /** Decoded over the timesteps that cover the crop itself (width / 8), ignoring those over the padding. */
  ownSteps: RecognizedText;
}

function floats(tensor: ort.Tensor | undefined): { data: Float32Array; dims: number[] } {
  if (tensor === undefined || !(tensor.data instanceof Float32Array)) throw new Error('expected a float32 output');
  return { data: tensor.data, dims: [...tensor.dims] };
}

/** PaddleOCR DetResizeForTest (limit_side_len 960, limit_type max): truncate, then round to 32 half to even. */
function limitRound32(width: number, height: number, limit = 960): [number, number] {
  const ratio = Math.max(width, height) > limit ? limit / Math.max(width, height) : 1;
  const side = (s: number): number => Math.max(roundHalfEven(Math.trunc(s * ratio) / 32) * 32, 32);
  return [side(width), side(height)];
}

async function decodeRgb(path: string): Promise<RgbImage> {
  const { data, info } = await sharp(path)
    .rotate()
    .removeAlpha()
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { pixels: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
}

async function detect(models: OcrModels, image: RgbImage): Promise<TextBox[]> {
  const [w, h] = limitRound32(image.width, image.height);
  const resized = await sharp(image.pixels, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(w, h, { fit: 'fill', kernel: 'linear' })
    .raw()
    .toBuffer();
  const input = new Float32Array(3 * w * h);
  normalizeInto(new Uint8Array(resized.buffer, resized.byteOffset, resized.byteLength), w, h, DET_NORMALIZE, input, 0, h, w);
  const out = await models.det.run({ [models.det.inputNames[0]!]: new ort.Tensor('float32', input, [1, 3, h, w]) });
  const prob = floats(out[models.det.outputNames[0]!]);
  const transform: ImageTransform = {
    originalWidth: image.width,
    originalHeight: image.height,
    scaleX: w / image.width,
    scaleY: h / image.height,
    offsetX: 0,
    offsetY: 0,
  };
  return dbPostprocess({ data: prob.data, width: w, height: h }, transform);
}

async function readLines(models: OcrModels, image: RgbImage): Promise<OcrLine[]> {
  const boxes = await detect(models, image);
  if (boxes.length === 0) return [];
  const crops = boxes.map((b) =>
    resizeForRecognizer(cropTextLine(image, b.polygon), {
      height: RECOGNIZER_DEFAULTS.height,
      maxWidth: RECOGNIZER_DEFAULTS.maxWidth,
    }),
  );
  const height = RECOGNIZER_DEFAULTS.height;
  const batchWidth = Math.max(RECOGNIZER_DEFAULTS.minBatchWidth, ...crops.map((c) => c.width));
  const input = new Float32Array(crops.length * 3 * height * batchWidth);
  crops.forEach((c, i) => normalizeInto(c.pixels, c.width, c.height, REC_NORMALIZE, input, i, height, batchWidth, 0));
  const feeds = { [models.rec.inputNames[0]!]: new ort.Tensor('float32', input, [crops.length, 3, height, batchWidth]) };
  const out = floats((await models.rec.run(feeds))[models.rec.outputNames[0]!]);
  const texts = decodeEach(out.data, out.dims, models.labels);
  const [, steps, classes] = out.dims as [number, number, number];
  return boxes.map((box, i) => {
    const own = Math.min(steps, Math.floor(crops[i]!.width / 8));
    const item = out.data.subarray(i * steps * classes, (i * steps + own) * classes);
    return { box, text: texts[i]!, ownSteps: ctcDecode(item, own, classes, models.labels) };
  });
}

const compact = (s: string): string => s.toUpperCase().replace(/\s+/g, '');

t.test(
  'end to end: photos read through detector, DB, crops, recogniser and CTC',
  sharedTestOptions(
    'models/ppocrv4-det/model.onnx',
    'models/ppocrv4-rec/model.onnx',
    REC_LABELS,
    'models/ppocrv4-det/test_data_set_0/input_0.pb',
    'images/text_no_parking.jpg',
    'images/street_notice_sign.jpg',
  ),
  async (t) => {
    const options = { logSeverityLevel: 4 as const };
    const models: OcrModels = {
      det: await ort.InferenceSession.create(modelPath('ppocrv4-det'), options),
      rec: await ort.InferenceSession.create(modelPath('ppocrv4-rec'), options),
      labels: await readLabels(modelPath('ppocrv4-rec', 'labels.txt')),
    };
    t.teardown(async () => {
      await models.det.release();
      await models.rec.release();
    });
    const report = (lines: OcrLine[]): string =>
      lines.map((l) => `${JSON.stringify(l.box.polygon)} "${l.text.text}" ${l.text.score.toFixed(3)}`).join('\n');
    const samePaddedOrNot = (t: Test, lines: OcrLine[]): void => {
      t.same(
        lines.map((l) => l.text.text),
        lines.map((l) => l.ownSteps.text),
        'the timesteps over the batch padding decode to nothing',
      );
    };

    t.test('text_no_parking.jpg reads NO PARKING twice', async (t) => {
      const image = await decodeRgb(imagePath('text_no_parking.jpg'));
      t.same([image.width, image.height], [1280, 960]);
      t.same(limitRound32(image.width, image.height), [960, 704], 'Python rounding: 22.5 -> 22');
      const lines = await readLines(models, image);
      t.comment(report(lines));
      t.same(
        lines.map((l) => compact(l.text.text)),
        ['NOPARKING', 'NOPARKING'],
      );
      samePaddedOrNot(t, lines);
    });

    t.test('street_notice_sign.jpg reads the notice', async (t) => {
      const image = await decodeRgb(imagePath('street_notice_sign.jpg'));
      const lines = await readLines(models, image);
      t.comment(report(lines));
      const texts = lines.map((l) => compact(l.text.text));
      for (const word of ['NOTICE', 'DOUBLE', 'PARKING', 'PROHIBITED']) t.ok(texts.includes(word), `reads ${word}`);
      t.ok(texts.indexOf('NOTICE') < texts.indexOf('PROHIBITED'), 'in reading order');
      samePaddedOrNot(t, lines);
    });

    // The detector's reference input is street_pub_car.jpg at its own size (640x480), so its pixels can be
    // recovered exactly: x = (p/255 - mean)/std with integer p.
    t.test('street_pub_car (recovered from the detector reference input) reads the pub sign', async (t) => {
      const ref = readTensorProto(modelPath('ppocrv4-det', 'test_data_set_0/input_0.pb'));
      const [, , h, w] = ref.dims as [number, number, number, number];
      const plane = w * h;
      const pixels = new Uint8Array(plane * 3);
      let worst = 0;
      for (let c = 0; c < 3; c++) {
        for (let i = 0; i < plane; i++) {
          const p = ((ref.data[c * plane + i] as number) * DET_NORMALIZE.std[c]! + DET_NORMALIZE.mean[c]!) * 255;
          worst = Math.max(worst, Math.abs(p - Math.round(p)));
          pixels[i * 3 + (2 - c)] = Math.round(p); // tensor channel 0 is B
        }
      }
      t.ok(worst < 1e-3, `mean/std apply in tensor (BGR) order: pixels recover as integers (worst ${worst})`);
      const lines = await readLines(models, { pixels, width: w, height: h });
      t.comment(report(lines));
      const texts = lines.map((l) => compact(l.text.text));
      t.ok(texts.includes('PRIORY'), 'reads PRIORY');
      t.ok(texts.includes('GALLERIES'), 'reads GALLERIES');
      t.ok(
        texts.some((s) => s.includes('THESHIP')),
        'reads ... the ship',
      );
      samePaddedOrNot(t, lines);
    });
  },
);
