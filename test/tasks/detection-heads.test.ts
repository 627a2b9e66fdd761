/**
 * The detection heads (src/tasks/detection/heads.ts and its decoders) on hand-built tiny models with known outputs,
 * through the app: the default reading, no detection, every class filtered out, padding rows, the caps, and a batch
 * of 8 whose images must not be mixed up; the startup checks of each head against a model's outputs; and the DETR
 * softmax reading. Real weights: detection-heads-real.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import t, { type Test } from 'tap';
import { parseManifest, type DetectionEntry } from '../../src/config/manifest.js';
import type { TensorMeta } from '../../src/core/types.js';
import { decodeDetr } from '../../src/tasks/detection/detr.js';
import { createHeadDecoder } from '../../src/tasks/detection/heads.js';
import { buildTestApp, writeManifest, type Json } from '../helpers/app.js';
import { constantHeadModel, writeModel, type ConstantOutput } from '../helpers/head-models.js';

t.setTimeout(120_000);

const LABELS = ['cat', 'dog', 'bird'];
const SIZE = 32;
/** Photos are 64x32: stretched to 32x32, x halves and y stays, so a tensor box (x1, y1, x2, y2) is (2·x1, y1, 2·x2, y2). */
const PHOTO_W = 64;
const PHOTO_H = 32;
const logit = (p: number): number => Math.log(p / (1 - p));
const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

interface Expected {
  label: string;
  /** Of the image's mean input value m (0..1). */
  score: (m: number) => number;
  box: [number, number, number, number];
}
/** In tensor pixels: dog (4,4)-(12,20) at 0.5 + 0.4·m, bird (16,8)-(28,24) at 0.8, a second bird (17,8)-(29,24) at 0.7
 * that NMS suppresses (IoU 0.85), and a cat at 0.9 wholly left of the image. */
const DOG: Expected = { label: 'dog', score: (m) => 0.5 + 0.4 * m, box: [8, 4, 24, 20] };
const BIRD: Expected = { label: 'bird', score: () => 0.8, box: [32, 8, 56, 24] };
const BIRD2: Expected = { label: 'bird', score: () => 0.7, box: [34, 8, 58, 24] };

interface TinyHead {
  name: string;
  head: Record<string, Json>;
  outputs: ConstantOutput[];
  /** At the default threshold 0.3, in any order (the test sorts by score). */
  expected: Expected[];
  /** What score_threshold=0 keeps, where padding rows must still be dropped. */
  atZero?: number;
}

const transpose = (rows: number[][]): number[] => (rows[0] ?? []).flatMap((_, j) => rows.map((r) => r[j] as number));

const HEADS: TinyHead[] = [
  {
    name: 'ultralytics',
    head: { type: 'ultralytics' },
    // [4 + 3, 4 anchors]: the export's own channels-first layout.
    outputs: [
      {
        name: 'output0',
        dims: [7, 4],
        base: transpose([
          [8, 12, 8, 16, 0.05, 0.5, 0.05],
          [22, 16, 12, 16, 0.02, 0.1, 0.8],
          [23, 16, 12, 16, 0.02, 0.1, 0.7],
          [-20, 12, 8, 16, 0.9, 0.05, 0.05],
        ]),
        delta: transpose([[0, 0, 0, 0, 0, 0.4, 0], new Array<number>(7).fill(0), new Array<number>(7).fill(0), new Array<number>(7).fill(0)]),
      },
    ],
    expected: [BIRD, DOG],
  },
  {
    name: 'yolov5',
    head: { type: 'yolov5' },
    outputs: [
      {
        name: 'output0',
        dims: [4, 8],
        base: [8, 12, 8, 16, 1, 0.05, 0.5, 0.05, 22, 16, 12, 16, 0.8, 0.02, 0.1, 1, 23, 16, 12, 16, 0.7, 0, 0, 1, -20, 12, 8, 16, 0.9, 1, 0, 0],
        delta: [0, 0, 0, 0, 0, 0, 0.4, 0, ...new Array<number>(24).fill(0)],
      },
    ],
    expected: [BIRD, DOG],
  },
  {
    name: 'end2end',
    head: { type: 'end2end' },
    // No NMS in Ocular: the second bird stays. A zero row and a row whose class names no label are padding.
    outputs: [
      {
        name: 'output0',
        dims: [5, 6],
        base: [16, 8, 28, 24, 0.8, 2, 4, 4, 12, 20, 0.5, 1, 17, 8, 29, 24, 0.7, 2, 0, 0, 0, 0, 0, 0, 1, 1, 5, 5, 0.95, 7],
        delta: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.4, 0, ...new Array<number>(18).fill(0)],
      },
    ],
    expected: [BIRD, DOG, BIRD2],
    atZero: 3,
  },
  {
    name: 'end2end-nms',
    head: { type: 'end2end', nms: true },
    outputs: [],
    expected: [BIRD, DOG],
  },
  {
    name: 'boxes-scores-labels',
    head: { type: 'boxes-scores-classes' },
    // torchvision's: xyxy pixels, int64 labels from 0; zero rows are padding.
    outputs: [
      { name: 'boxes', dims: [4, 4], base: [16, 8, 28, 24, 4, 4, 12, 20, 0, 0, 0, 0, 0, 0, 0, 0] },
      { name: 'scores', dims: [4], base: [0.8, 0.5, 0, 0], delta: [0, 0.4, 0, 0] },
      { name: 'labels', dims: [4], base: [2, 1, 0, 0], int64: true },
    ],
    expected: [BIRD, DOG],
    atZero: 2,
  },
  {
    name: 'boxes-scores-classes-tf',
    head: {
      type: 'boxes-scores-classes',
      boxesOutput: 'detection_boxes',
      scoresOutput: 'detection_scores',
      classesOutput: 'detection_classes',
      countOutput: 'num_detections',
      boxFormat: 'yxyx',
      normalized: true,
      classOffset: 1,
    },
    // TensorFlow's: yxyx normalised, classes from 1; a confident cat past num_detections is not read.
    outputs: [
      { name: 'detection_boxes', dims: [4, 4], base: [8, 16, 24, 28, 4, 4, 20, 12, 3, 3, 16, 16, 0, 0, 0, 0].map((v) => v / SIZE) },
      { name: 'detection_scores', dims: [4], base: [0.8, 0.5, 0.9, 0], delta: [0, 0.4, 0, 0] },
      { name: 'detection_classes', dims: [4], base: [3, 2, 1, 0] },
      { name: 'num_detections', dims: [], base: [2] },
    ],
    expected: [BIRD, DOG],
    atZero: 2,
  },
  {
    name: 'detr',
    head: { type: 'detr', boxesOutput: 'pred_boxes', logitsOutput: 'pred_logits' },
    // RT-DETR's two outputs: normalised centre boxes, sigmoid logits; the dog's logit is 2·m.
    outputs: [
      { name: 'pred_boxes', dims: [3, 4], base: [8, 12, 8, 16, 22, 16, 12, 16, -20, 12, 8, 16].map((v) => v / SIZE) },
      { name: 'pred_logits', dims: [3, 3], base: [-5, 0, -5, -5, -5, logit(0.8), logit(0.9), -5, -5], delta: [0, 2, 0, 0, 0, 0, 0, 0, 0] },
    ],
    expected: [BIRD, { ...DOG, score: (m) => sigmoid(2 * m) }],
  },
];
/** end2end-nms reads end2end's model. */
const modelOf = (h: TinyHead): TinyHead => (h.outputs.length > 0 ? h : (HEADS.find((x) => x.name === 'end2end') as TinyHead));

function solid(v: number): Promise<Buffer> {
  return sharp({ create: { width: PHOTO_W, height: PHOTO_H, channels: 3, background: { r: v, g: v, b: v } } }).png().toBuffer();
}

interface Detection {
  label: string;
  score: number;
  box: { x1: number; y1: number; x2: number; y2: number };
}

function matches(got: readonly Detection[], expected: readonly Expected[], m: number): boolean {
  const want = [...expected].sort((a, b) => b.score(m) - a.score(m));
  return (
    got.length === want.length &&
    got.every((d, i) => {
      const w = want[i] as Expected;
      const box = [d.box.x1, d.box.y1, d.box.x2, d.box.y2];
      return d.label === w.label && Math.abs(d.score - w.score(m)) <= 1e-5 && box.every((v, k) => Math.abs(v - (w.box[k] as number)) <= 1e-3);
    })
  );
}

const show = (ds: readonly Detection[]): string => JSON.stringify(ds.map((d) => [d.label, +d.score.toFixed(6), [d.box.x1, d.box.y1, d.box.x2, d.box.y2].map((v) => +v.toFixed(3))]));

t.test('tiny models of every head, through the app', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-heads-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'labels.txt'), `${LABELS.join('\n')}\n`);
  // Every request is a multipart body of 8 images and a batch flushes when 8 are queued (or after 10 s), so every
  // reading below is also one of a batch of 8 whose images must not be mixed up.
  const models = HEADS.map((h): Record<string, Json> => {
    const { path, sha256 } = writeModel(dir, modelOf(h).name, constantHeadModel(SIZE, modelOf(h).outputs));
    return {
      name: h.name,
      task: 'object-detection',
      source: path,
      sha256,
      labels: join(dir, 'labels.txt'),
      input: { width: SIZE, height: SIZE, resize: { mode: 'stretch' }, scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] },
      head: h.head,
      batching: { maxBatchSize: 8, maxQueueDelayMs: 10_000, timeoutMs: 60_000, tune: 'off', padBatches: 'off' },
    };
  });
  const { app } = await buildTestApp(t, { manifestPath: writeManifest(models, dir) });
  const levels = [0, 32, 64, 96, 128, 160, 192, 224];
  const photos = await Promise.all(levels.map(solid));
  const form = new FormData();
  photos.forEach((p, i) => form.append('file', new Blob([p], { type: 'image/png' }), `grey${levels[i]}.png`));
  const request = new Request('http://localhost/', { method: 'POST', body: form });
  const body = { payload: Buffer.from(await request.arrayBuffer()), type: request.headers.get('content-type') ?? '' };
  /** The 8 images' detections, image i of mean input levels[i] / 255. */
  const read = async (model: string, query = ''): Promise<Detection[][]> => {
    const res = await app.inject({ method: 'POST', url: `/v1/models/${model}/predict${query}`, headers: { 'content-type': body.type }, payload: body.payload });
    if (res.statusCode !== 200) throw new Error(`${model}${query}: ${res.statusCode} ${res.body.slice(0, 300)}`);
    return res.json<{ results: { detections: Detection[] }[] }>().results.map((r) => r.detections);
  };
  const each = (got: Detection[][], expected: readonly Expected[]): boolean =>
    got.length === 8 && got.every((d, i) => matches(d, expected, (levels[i] as number) / 255));

  for (const h of HEADS) {
    const got = await read(h.name);
    t.ok(each(got, h.expected), `${h.name}: the known detections in original pixels, by score, each image its own (${show(got[4] ?? [])} at m = 0.5)`);
    t.ok((await read(h.name, '?score_threshold=0.95')).every((d) => d.length === 0), `${h.name}: none above 0.95`);
    t.ok((await read(h.name, '?classes=cat')).every((d) => d.length === 0), `${h.name}: only cats asked for, and no cat inside the image`);
    // Past m = 0.75 the dog outscores the bird.
    const one = await read(h.name, '?max_detections=1');
    t.ok(one.every((d, i) => matches(d, [h.expected.reduce((a, b) => (b.score((levels[i] as number) / 255) > a.score((levels[i] as number) / 255) ? b : a))], (levels[i] as number) / 255)), `${h.name}: max_detections=1 keeps the best`);
    t.ok(each(await read(h.name, '?classes=dog'), h.expected.filter((e) => e.label === 'dog')), `${h.name}: classes=dog`);
    if (h.atZero !== undefined) {
      const all = await read(h.name, '?score_threshold=0');
      t.ok(all.every((d) => d.length === h.atZero), `${h.name}: padding rows are not detections, even at score_threshold 0 (${show(all[0] ?? [])})`);
    }
  }
  const metrics = (await app.inject({ url: '/metrics' })).body;
  for (const h of HEADS) {
    const value = (kind: string): number => Number(metrics.split('\n').find((l) => l.startsWith(`ocular_batch_size_${kind}{model="${h.name}",`))?.split(' ')[1]);
    t.ok(value('count') >= 5 && value('sum') === 8 * value('count'), `${h.name}: every request ran as one batch of 8 (${value('count')} batches, ${value('sum')} images)`);
  }
});

function entryWith(head: Record<string, Json>): DetectionEntry {
  const manifest = parseManifest({
    models: [{ name: 'm', task: 'object-detection', source: 'm.onnx', labels: 'l.txt', input: { width: 640, height: 640 }, head }],
  });
  return manifest.models[0] as DetectionEntry;
}
const out = (name: string, shape: number[]): TensorMeta => ({ name, type: 'float32', shape, symbolicShape: shape.map(() => '') });
const refusal = (t: Test, head: Record<string, Json>, outputs: TensorMeta[], message: RegExp): void => {
  t.throws(() => createHeadDecoder(entryWith(head), outputs, LABELS), { name: 'ModelCheckError', message });
};

t.test('each head is checked against the model outputs at startup', async (t) => {
  const ok = (head: Record<string, Json>, outputs: TensorMeta[]): void => {
    t.doesNotThrow(() => createHeadDecoder(entryWith(head), outputs, LABELS), JSON.stringify(head));
  };
  ok({ type: 'ultralytics' }, [out('output0', [-1, 7, 8400])]);
  ok({ type: 'ultralytics' }, [out('output0', [-1, 8400, 7])]);
  ok({ type: 'ultralytics' }, [out('output0', [-1, 7, -1])]);
  refusal(t, { type: 'ultralytics' }, [out('output0', [1, 84, 8400])], /"m": labels: 3 labels give rows of 4 \+ 3 values/);
  refusal(t, { type: 'ultralytics' }, [out('output0', [1, 7, 7])], /head\.layout: .* both axes; set head\.layout/);
  refusal(t, { type: 'ultralytics' }, [out('output0', [1, -1, -1])], /dynamic on both axes; set head\.layout/);
  ok({ type: 'ultralytics', layout: 'channels-first' }, [out('output0', [1, -1, -1])]);
  refusal(t, { type: 'ultralytics', layout: 'anchors-first' }, [out('output0', [1, 7, 8400])], /labels: anchors-first puts/);
  refusal(t, { type: 'ultralytics' }, [out('output0', [8400, 7])], /rank 2/);
  refusal(t, { type: 'ultralytics' }, [out('a', [1, 7, 10]), out('b', [1, 7, 10])], /head\.output: the model has 2 outputs/);
  ok({ type: 'yolov5' }, [out('output0', [1, 25200, 8])]);
  refusal(t, { type: 'yolov5' }, [out('output0', [1, 25200, 85])], /labels: row width .* implies 8, .* has 85/);
  ok({ type: 'end2end' }, [out('output0', [1, 300, 6])]);
  refusal(t, { type: 'end2end' }, [out('output0', [1, 300, 7])], /head\.output: row width/);
  ok({ type: 'boxes-scores-classes' }, [out('boxes', [-1, 4]), out('scores', [-1]), out('labels', [-1])]);
  refusal(t, { type: 'boxes-scores-classes' }, [out('boxes', [-1, 4]), out('scores', [-1])], /head\.classesOutput: the model has no output "classes" or "labels"/);
  refusal(t, { type: 'boxes-scores-classes', countOutput: 'n' }, [out('boxes', [-1, 4]), out('scores', [-1]), out('classes', [-1])], /head\.countOutput: the model has no output "n"/);
  ok({ type: 'detr' }, [out('output', [1, 300, 7])]);
  ok({ type: 'detr', scores: 'softmax' }, [out('output', [1, 100, 8])]);
  refusal(t, { type: 'detr' }, [out('output', [1, 100, 8])], /labels: row width .* implies 7/);
  ok({ type: 'detr', boxesOutput: 'pred_boxes', logitsOutput: 'pred_logits' }, [out('pred_logits', [1, 100, 3]), out('pred_boxes', [1, 100, 4])]);
  refusal(t, { type: 'detr', boxesOutput: 'pred_boxes' }, [out('pred_boxes', [1, 100, 4])], /head: name either output .* or both/);
  refusal(t, { type: 'detr', boxesOutput: 'pred_boxes', logitsOutput: 'pred_logits' }, [out('pred_logits', [1, 100, 4]), out('pred_boxes', [1, 100, 4])], /labels: logits per query \(3 classes\)/);
});

t.test('the manifest refuses unknown heads and options', async (t) => {
  t.throws(() => entryWith({ type: 'yolov8' }), /head/);
  t.throws(() => entryWith({ type: 'ultralytics', layout: 'nchw' }), /head\.layout/);
  t.throws(() => entryWith({ type: 'end2end', iou: 0.5 }), /head/);
  const bsc = entryWith({ type: 'boxes-scores-classes' }).head;
  t.same(bsc, { type: 'boxes-scores-classes', boxesOutput: 'boxes', scoresOutput: 'scores', boxFormat: 'xyxy', normalized: false, classOffset: 0, nms: false }, "torchvision's defaults");
});

t.test("DETR's softmax reading: each query its best real class at its probability, 'no object' last", async (t) => {
  const transform = { originalWidth: 100, originalHeight: 100, scaleX: 1, scaleY: 1, offsetX: 0, offsetY: 0 };
  const filter = { scoreThreshold: 0.3, iouThreshold: 0.5, maxDetections: 10 };
  const boxes = Float32Array.from([0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.75, 0.75, 0.125, 0.125]);
  // q0: cat at e^2 / (e^2 + 3); q1: "no object" wins (dog at e / (e^3 + e + 2)); q2: bird at e^1.5 / (e^1.5 + 3).
  const logits = Float32Array.from([2, 0, 0, 0, 0, 1, 0, 3, 0, 0, 1.5, 0]);
  const views = { boxes, boxStride: 4, logits, logitOffset: 0, logitStride: 4 };
  const head = { queries: 3, numClasses: 3, scores: 'softmax' as const, nms: false, inputWidth: 100, inputHeight: 100 };
  const dets = decodeDetr(views, head, transform, filter, LABELS);
  const e = Math.E;
  t.same(dets.map((d) => d.label), ['cat', 'bird'], 'q1, whose best column is "no object", is not read');
  t.ok(Math.abs((dets[0]?.score ?? 0) - e ** 2 / (e ** 2 + 3)) < 1e-9 && Math.abs((dets[1]?.score ?? 0) - e ** 1.5 / (e ** 1.5 + 3)) < 1e-9, 'softmax over all four columns');
  t.same(dets[0]?.box, { x1: 37.5, y1: 37.5, x2: 62.5, y2: 62.5 }, 'normalised centre boxes to pixels');
  const noCat = decodeDetr(views, head, transform, { ...filter, classes: new Set([1, 2]) }, LABELS);
  t.same(noCat.map((d) => d.label), ['bird'], 'a query whose best class is filtered out is dropped, not read as its next class');
});
