/**
 * uint8 input end to end (manifest `input.uint8Input`): two apps on the CPU provider, every image model with the
 * switch `always` in one and `off` in the other, answer every shared photo alike, within these tolerances:
 * classification top-1 equal and scores within 1e-3; detection the same detections (labels) with boxes within
 * 0.5 px and scores within 1e-3; OCR the same text. The model's own interface stays float32: /v1/models and /v2
 * metadata show the original input, and raw float32 tensors still run on a stage that takes uint8 images.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import t from 'tap';
import type { Stage } from '../../src/core/stage.js';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { imagePath, maxAbsDiff, modelPath, readTensorProto, sharedDir, sharedTestOptions } from '../helpers/shared.js';

t.setTimeout(600_000);

const MODELS = ['mobilenetv2', 'yolox-nano', 'ultraface', 'ocr'] as const;
const SHARED = [
  'models/mobilenetv2-12-int8/model.onnx',
  'models/yolox-nano/model.onnx',
  'models/yolox-nano/test_data_set_0/input_0.pb',
  'models/yolox-nano/test_data_set_0/output_0.pb',
  'models/ultraface-rfb-320/model.onnx',
  'models/ppocrv4-det/model.onnx',
  'models/ppocrv4-rec/model.onnx',
  'images',
];
const SCORE_TOL = 1e-3;
const BOX_TOL_PX = 0.5;

type Json = Record<string, unknown>;

/** The shared models with `input.uint8Input` set on every stage (OCR: both), batch tuning off (not under test). */
function manifest(mode: 'always' | 'off'): string {
  const withMode = (stage: Json): Json => ({
    ...stage,
    input: { ...(stage['input'] as Json), uint8Input: mode },
    batching: { ...(stage['batching'] as Json), tune: 'off' },
  });
  return writeManifest(
    MODELS.map((name) => {
      const m = sharedModel(name);
      return name === 'ocr' ? { ...m, detector: withMode(m['detector'] as Json), recognizer: withMode(m['recognizer'] as Json) } : withMode(m);
    }) as Parameters<typeof writeManifest>[0],
  );
}

interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}
interface Answer {
  predictions?: { label: string; score: number }[];
  detections?: { label: string; score: number; box: Box }[];
  lines?: { text: string }[];
}

async function predict(app: FastifyInstance, model: string, photo: string): Promise<Answer> {
  const res = await app.inject({
    method: 'POST',
    url: `/v1/models/${model}/predict`,
    headers: { 'content-type': 'application/octet-stream' },
    payload: readFileSync(imagePath(photo)),
  });
  if (res.statusCode !== 200) throw new Error(`${model} on ${photo}: ${res.statusCode} ${res.body.slice(0, 300)}`);
  return res.json<Answer>();
}

function stageOf(app: FastifyInstance, model: string, stage: string): Stage {
  const found = app.ocular.models.list().find((m) => m.name === model)?.stages.find((s) => s.name === stage);
  if (found === undefined) throw new Error(`no stage ${stage} of ${model}`);
  return found;
}

t.test('uint8 input on and off answer every shared photo alike', sharedTestOptions(...SHARED), async (t) => {
  const on = (await buildTestApp(t, { manifestPath: manifest('always'), config: { device: 'cpu' } })).app;
  const off = (await buildTestApp(t, { manifestPath: manifest('off'), config: { device: 'cpu' } })).app;

  t.test('/v1/models: which stages take uint8, and the original float32 input shown', async (t) => {
    const models = (app: FastifyInstance) =>
      app.inject({ url: '/v1/models' }).then((r) => r.json<{ models: { name: string; stages: { stage: string; uint8Input: boolean; inputs: unknown[] }[] }[] }>().models);
    const [a, b] = await Promise.all([models(on), models(off)]);
    const flags = (list: typeof a) => list.flatMap((m) => m.stages.map((s) => `${m.name}/${s.stage}:${s.uint8Input}`));
    t.same(flags(a), ['mobilenetv2/main:true', 'yolox-nano/main:true', 'ultraface/main:true', 'ocr/detector:true', 'ocr/recognizer:false'],
      'always: every stage but the recogniser, which pads crops with 0 after normalising (pixel 127.5)');
    t.ok(flags(b).every((f) => f.endsWith(':false')), 'off: none');
    t.same(a.map((m) => m.stages.map((s) => s.inputs)), b.map((m) => m.stages.map((s) => s.inputs)), 'the inputs shown are the same: the models\' own (float32)');
  });

  t.test('/v2 metadata stays float32 and raw float32 tensors still run on a stage that takes uint8 images', async (t) => {
    const meta = (await on.inject({ url: '/v2/models/yolox-nano' })).json<{ inputs: { name: string; datatype: string; shape: number[] }[] }>();
    // The model's own tensor input, float32, then the encoded-image input every image model lists (issue #19).
    t.same(meta.inputs, [
      { name: 'images', datatype: 'FP32', shape: [-1, 3, 416, 416] },
      { name: 'image', datatype: 'BYTES', shape: [-1], parameters: { encoded_images: true, optional: true } },
    ]);
    const stage = stageOf(on, 'yolox-nano', 'main');
    t.equal(stage.pool.info.uint8Input, true);
    const input = readTensorProto(modelPath('yolox-nano', 'test_data_set_0/input_0.pb'));
    const expected = readTensorProto(modelPath('yolox-nano', 'test_data_set_0/output_0.pb'));
    const outputs = await stage.pool.runTensors({ images: { data: input.data, dims: input.dims, type: 'float32' } });
    const got = Object.values(outputs)[0];
    if (got === undefined) throw new Error('no output');
    const diff = maxAbsDiff(got.data, expected.data);
    t.ok(diff <= 1e-4, `reference output reproduced through the float session: max |diff| ${diff.toExponential(2)}`);
  });

  const photos = readdirSync(`${sharedDir}/images`).filter((f) => /\.(jpe?g|png)$/i.test(f)).sort();
  for (const model of MODELS) {
    t.test(`${model}: ${photos.length} photos`, async (t) => {
      let worstScore = 0;
      let worstBox = 0;
      for (const photo of photos) {
        const [a, b] = await Promise.all([predict(on, model, photo), predict(off, model, photo)]);
        if (a.predictions !== undefined && b.predictions !== undefined) {
          t.equal(a.predictions[0]?.label, b.predictions[0]?.label, `${photo}: top-1 ${b.predictions[0]?.label}`);
          const n = Math.min(a.predictions.length, b.predictions.length);
          for (let i = 0; i < n; i++) worstScore = Math.max(worstScore, Math.abs((a.predictions[i]?.score ?? 0) - (b.predictions[i]?.score ?? 0)));
        }
        if (a.detections !== undefined && b.detections !== undefined) {
          t.same(a.detections.map((d) => d.label), b.detections.map((d) => d.label), `${photo}: ${b.detections.length} detections, same labels in order`);
          a.detections.forEach((d, i) => {
            const e = b.detections?.[i];
            if (e === undefined) return;
            worstScore = Math.max(worstScore, Math.abs(d.score - e.score));
            for (const k of ['x1', 'y1', 'x2', 'y2'] as const) worstBox = Math.max(worstBox, Math.abs(d.box[k] - e.box[k]));
          });
        }
        if (a.lines !== undefined && b.lines !== undefined) {
          t.same(a.lines.map((l) => l.text), b.lines.map((l) => l.text), `${photo}: ${b.lines.length} lines, the same text`);
        }
      }
      t.ok(worstScore <= SCORE_TOL, `scores within ${SCORE_TOL}: worst ${worstScore.toExponential(2)}`);
      t.ok(worstBox <= BOX_TOL_PX, `boxes within ${BOX_TOL_PX} px: worst ${worstBox.toFixed(4)}`);
    });
  }
});
