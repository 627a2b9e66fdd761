/**
 * `npm run models:inspect` (scripts/models-inspect.ts): on every shared model and on tiny models with the shapes of
 * real exports, it prints the I/O and what it recognises; `--manifest` drafts an entry whose unknown values are
 * marked, refused by the manifest's check until filled, and which, filled in, loads and answers.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { parseManifest } from '../../src/config/manifest.js';
import { main } from '../../scripts/models-inspect.js';
import { FILL_MARK } from '../../scripts/lib/manifest-draft.js';
import { buildTestApp, sharedModel, writeManifest, type Json } from '../helpers/app.js';
import { encodeExport, EXPORTS } from '../helpers/export-shapes.js';
import { imagePath, modelPath, projectRoot, sharedTestOptions } from '../helpers/shared.js';

t.setTimeout(120_000);

async function inspect(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, (s) => (out += s), (s) => (err += s));
  return { code, out, err };
}

const SHARED: [string, RegExp, RegExp][] = [
  ['mobilenetv2-12-int8', /recognised image-classification \(1000 classes\), high confidence/, /image input "input": float32, NCHW, batch dynamic, 224x224/],
  ['yolox-nano', /recognised object-detection, head yolox \(80 classes\), high confidence/, /image input "images": float32, NCHW, batch dynamic, 416x416/],
  ['ultraface-rfb-320', /recognised object-detection, head ssd \(2 classes\), high confidence/, /image input "input": float32, NCHW, batch dynamic, 320x240/],
  ['deeplabv3-mobilenetv2-voc', /recognised semantic-segmentation \(21 classes\), high confidence/, /image input "sub_7": float32, NHWC, batch dynamic, 257x257/],
  ['ppocrv4-det', /recognised ocr-detection, high confidence/, /image input "x": float32, NCHW, batch dynamic, size dynamic/],
  ['ppocrv4-rec', /recognised ocr-recognition \(6625 classes\), high confidence/, /image input "x": float32, NCHW, batch dynamic, size dynamic/],
];

t.test('every shared model: its I/O, producer, sha256 and what it is', sharedTestOptions(...SHARED.map(([m]) => `models/${m}/model.onnx`)), async (t) => {
  const fixture = JSON.stringify(JSON.parse(readFileSync(join(projectRoot, 'test', 'fixtures', 'shared.manifest.json'), 'utf8')));
  for (const [model, recognised, input] of SHARED) {
    const { code, out } = await inspect([modelPath(model)]);
    t.equal(code, 0, model);
    t.match(out, recognised, model);
    t.match(out, input, model);
    const sha = /^sha256 +([0-9a-f]{64})$/m.exec(out)?.[1] ?? '';
    t.ok(fixture.includes(sha), `${model}: the sha256 is the one the fixture manifest verifies`);
  }
  const { out } = await inspect([modelPath('yolox-nano')]);
  t.match(out, /producer +pytorch 1\.10, IR 7, opsets ai\.onnx 11\n/);
  t.match(out, /inputs\n {2}images +float32 +\[batch, 3, 416, 416\]\noutputs\n {2}output +float32 +\[batch, 3549, 85\]/);
  t.match(out, /this model's family usually takes yolox/);
});

t.test('tiny models of each head and unsupported export', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-inspect-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const expected: Record<keyof typeof EXPORTS, RegExp> = {
    ultralytics: /object-detection, head ultralytics \(80 classes\), high/,
    ultralyticsTransposed: /object-detection, head ultralytics \(80 classes\), high/,
    yolov5: /object-detection, head yolov5 \(80 classes\), high/,
    end2end: /object-detection, head end2end, high/,
    tfDetection: /object-detection, head boxes-scores-classes, high/,
    torchvisionDetection: /object-detection, head boxes-scores-classes, high/,
    detr: /object-detection, head detr \(80 classes\), medium/,
    detrTwoOutputs: /object-detection, head detr \(92 classes\), high/,
    segNoMetadata: /instance-segmentation \(not supported by Ocular\), medium/,
    seg: /instance-segmentation \(not supported by Ocular\), high/,
    pose: /pose \(not supported by Ocular\), high/,
    obb: /oriented-detection \(not supported by Ocular\), high/,
  };
  for (const [name, shape] of Object.entries(EXPORTS)) {
    const file = join(dir, `${name}.onnx`);
    await writeFile(file, encodeExport(shape));
    const { code, out } = await inspect([file]);
    t.equal(code, 0);
    t.match(out, expected[name as keyof typeof EXPORTS], name);
  }
  const ultra = await inspect([join(dir, 'ultralytics.onnx')]);
  t.match(ultra.out, /metadata\n {2}description: Ultralytics YOLO11n-detect model\n[^]* {2}task: detect\n/, 'metadata properties are listed');
  t.match(ultra.out, /note: labels: left out: the model's metadata names its 80 classes \(class 0, class 1, class 2, \.\.\.\)/);
  const seg = await inspect([join(dir, 'seg.onnx'), '--manifest']);
  t.equal(JSON.parse(seg.out).task, 'tensor', 'an unsupported export drafts a raw-tensor entry');
  t.match(seg.err, /note: Ocular does not serve instance-segmentation exports/);
  const tf = await inspect([join(dir, 'tfDetection.onnx'), '--manifest']);
  t.match(tf.err, /note: input "input_tensor" is uint8/);
  t.match(tf.err, /fill: input\.width/, 'a dynamic size is left to fill');
});

t.test('bad arguments and files that are no model', async (t) => {
  t.equal((await inspect([])).code, 2);
  t.equal((await inspect(['a.onnx', 'b.onnx'])).code, 2);
  t.equal((await inspect(['a.onnx', '--preset', 'nope'])).code, 2);
  t.equal((await inspect(['a.onnx', '--bogus'])).code, 2);
  const missing = await inspect([join(tmpdir(), 'ocular-no-such-model.onnx')]);
  t.equal(missing.code, 1);
  t.match(missing.err, /ENOENT/);
  const dir = await mkdtemp(join(tmpdir(), 'ocular-inspect-bad-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'text.onnx'), 'hello, this is not a model');
  const text = await inspect([join(dir, 'text.onnx')]);
  t.equal(text.code, 1);
  t.equal(text.out, '');
});

t.test("each preset reproduces the fixture manifest's preprocessing of its shared model", sharedTestOptions(...SHARED.map(([m]) => `models/${m}/model.onnx`)), async (t) => {
  const cases: [string, string, string, (e: Record<string, Json>) => Json | undefined][] = [
    ['yolox-nano', 'yolox', 'yolox-nano', (e) => e['input']],
    ['deeplabv3-mobilenetv2-voc', 'tf', 'deeplabv3-seg', (e) => e['input']],
    ['ppocrv4-det', 'paddleocr', 'ocr', (e) => (e['detector'] as Record<string, Json> | undefined)?.['input']],
    ['ppocrv4-rec', 'paddleocr', 'ocr', (e) => (e['recognizer'] as Record<string, Json> | undefined)?.['input']],
  ];
  for (const [model, preset, fixture, inputOf] of cases) {
    const { out, err } = await inspect([modelPath(model), '--manifest', '--preset', preset]);
    const drafted = inputOf(JSON.parse(out) as Record<string, Json>) as Record<string, Json>;
    const expected = inputOf(sharedModel(fixture)) as Record<string, Json>;
    t.same(drafted, Object.fromEntries(Object.keys(drafted).map((k) => [k, expected[k] ?? null])), `${model} --preset ${preset}`);
    t.notMatch(err, /fill: .*input/, `${model}: nothing of the input left to fill`);
  }
});

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';

t.test('--manifest for mobilenet: marked values fail the check by name; filled in, the entry loads and classifies', sharedTestOptions(MOBILENET, 'images/cat_chelsea.png'), async (t) => {
  const { code, out, err } = await inspect([modelPath('mobilenetv2-12-int8'), '--manifest', '--name', 'mine']);
  t.equal(code, 0);
  const entry = JSON.parse(out) as Record<string, Json> & { input: Record<string, Json> };
  const marked = Object.entries({ labels: entry['labels'], ...Object.fromEntries(Object.entries(entry.input).map(([k, v]) => [`input.${k}`, v])) })
    .filter(([, v]) => typeof v === 'string' && v.startsWith(FILL_MARK))
    .map(([k]) => k);
  t.same(marked, ['labels', 'input.channelOrder', 'input.scale', 'input.mean', 'input.std', 'input.resize']);
  t.same(err.match(/^fill: .*$/gm), marked.map((m) => `fill: ${m}`), 'stderr lists the same fields');
  t.same([entry['name'], entry['task'], entry['sha256'], entry.input['width'], entry.input['height'], entry.input['layout']], [
    'mine',
    'image-classification',
    sharedModel('mobilenetv2')['sha256'],
    224,
    224,
    'NCHW',
  ]);
  const refused = (() => {
    try {
      parseManifest({ models: [entry] });
      return '';
    } catch (e) {
      return (e as Error).message;
    }
  })();
  for (const field of ['input.channelOrder', 'input.scale', 'input.mean', 'input.std', 'input.resize']) t.match(refused, `models[0].${field}`, `${field} refused while marked`);

  const labels = String(sharedModel('mobilenetv2')['labels']);
  const filled = {
    ...entry,
    labels,
    input: {
      ...entry.input,
      channelOrder: 'RGB',
      scale: 1 / 255,
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
      resize: { mode: 'shorter-side-center-crop', shorterSide: 256 },
    },
  };
  const preset = await inspect([modelPath('mobilenetv2-12-int8'), '--manifest', '--name', 'mine', '--preset', 'imagenet']);
  t.same({ ...(JSON.parse(preset.out) as object), labels }, filled, '--preset imagenet fills the same values');
  t.notMatch(preset.err, /fill: input/);

  const { app } = await buildTestApp(t, { manifestPath: writeManifest([filled as Record<string, Json>]) });
  const res = await app.inject({
    method: 'POST',
    url: '/v1/models/mine/predict',
    headers: { 'content-type': 'image/png' },
    payload: readFileSync(imagePath('cat_chelsea.png')),
  });
  t.equal(res.statusCode, 200, res.body.slice(0, 300));
  t.equal(res.json<{ predictions: { label: string }[] }>().predictions[0]?.label, 'Egyptian cat');
});

t.test('npm run models:inspect runs the script', sharedTestOptions('models/ultraface-rfb-320/model.onnx'), async (t) => {
  const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) => {
    execFile('npm', ['run', '-s', 'models:inspect', '--', modelPath('ultraface-rfb-320'), '--manifest', '--preset', 'imagenet'], { cwd: projectRoot }, (e, stdout) =>
      resolve({ code: e === null ? 0 : Number((e as { code?: number }).code ?? 1), stdout }),
    );
  });
  t.equal(code, 0);
  const entry = JSON.parse(stdout) as { head: unknown; task: string };
  t.same([entry.task, entry.head], ['object-detection', { type: 'ssd', scoresOutput: 'scores', boxesOutput: 'boxes' }]);
});
