/**
 * Bring-your-own-model inputs and labels, end to end on the real shared mobilenet, re-wrapped at test time (written
 * with onnx-proto into a temporary folder, never committed: they hold the shared weights) the way other exports
 * look:
 * - uint8 NHWC: the input TensorFlow's exports take, the normalisation moved into the graph (Transpose, Cast, Mul,
 *   Add in front of the original input);
 * - float16 without a batch dimension, its class names in its metadata and no labels file: a half-precision
 *   input as torchvision and Ultralytics exports take it ([3, H, W] in, [1000] out, `names` in metadata_props). It
 *   takes pixel values (scale 1, mean 0, std 1 in the manifest: 0..255 are exact in float16) and normalises in its
 *   graph, so that it sees exactly the original's values: normalised values rounded to float16 move this int8
 *   model's quantised input enough to reorder close classes (robin.jpg's top-1 changes), which would test the
 *   model's precision, not Ocular's feeding. The float16 outputs' decoding is checked on the tiny models
 *   (test/core/runner/image-feed.test.ts).
 * Each must answer the original's top-5 on the shared photos. Then a manifest whose model and labels are https://
 * URLs on a local server starts with no file beside it.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import onnxProto from 'onnx-proto';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest, type Json } from '../helpers/app.js';
import { makeCert, startServer } from '../helpers/https-server.js';
import { imagePath, modelPath, sharedTestOptions } from '../helpers/shared.js';

t.setTimeout(120_000);

const { onnx } = onnxProto;
const FLOAT = 1;
const UINT8 = 2;
const FLOAT16 = 10;
const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const LABELS = 'models/mobilenetv2-12-int8/labels.txt';
const PHOTOS = ['cat_chelsea.png', 'robin.jpg', 'coffee_cup.png'];
const MEAN = [0.485, 0.456, 0.406];
const STD = [0.229, 0.224, 0.225];

const dir = mkdtempSync(join(tmpdir(), 'ocular-own-model-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

type Dim = number | string;
const valueInfo = (name: string, elemType: number, dims: Dim[]) => ({
  name,
  type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
});
const ints = (name: string, values: number[]) => ({ name, ints: values, type: 7 });
const int = (name: string, value: number) => ({ name, i: value, type: 2 });
const floats = (name: string, dims: number[], values: number[]) => ({ name, dims, dataType: FLOAT, floatData: values });

/** A Python str(dict) of the labels, quoting as repr does: what Ultralytics writes into metadata_props. */
function pythonNames(labels: string[]): string {
  const repr = (s: string) => (s.includes("'") && !s.includes('"') ? `"${s}"` : `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`);
  return `{${labels.map((l, i) => `${i}: ${repr(l)}`).join(', ')}}`;
}

/** The shared mobilenet with `edit` applied to its graph, written to `name` in the temporary folder. */
function wrapped(name: string, edit: (graph: onnxProto.onnx.GraphProto, model: onnxProto.onnx.ModelProto) => void): string {
  const model = onnx.ModelProto.decode(readFileSync(modelPath('mobilenetv2-12-int8')));
  edit(model.graph as onnxProto.onnx.GraphProto, model);
  const path = join(dir, name);
  writeFileSync(path, onnx.ModelProto.encode(model).finish());
  return path;
}

/** uint8 [N, 224, 224, 3] RGB in; the normalisation (x / 255 - mean) / std in the graph, as a*x + b. */
function uint8Nhwc(): string {
  return wrapped('mobilenet-uint8-nhwc.onnx', (g) => {
    g.input = g.input.filter((i) => i.name !== 'input');
    g.input.unshift(onnx.ValueInfoProto.create(valueInfo('image', UINT8, ['N', 224, 224, 3])));
    g.initializer.push(
      onnx.TensorProto.create(floats('w/a', [3, 1, 1], STD.map((s) => 1 / 255 / s))),
      onnx.TensorProto.create(floats('w/b', [3, 1, 1], MEAN.map((m, c) => -m / (STD[c] as number)))),
    );
    g.node.unshift(
      onnx.NodeProto.create({ name: 'w/t', opType: 'Transpose', input: ['image'], output: ['w/nchw'], attribute: [ints('perm', [0, 3, 1, 2])] }),
      onnx.NodeProto.create({ name: 'w/cast', opType: 'Cast', input: ['w/nchw'], output: ['w/f'], attribute: [int('to', FLOAT)] }),
      onnx.NodeProto.create({ name: 'w/mul', opType: 'Mul', input: ['w/f', 'w/a'], output: ['w/m'] }),
      onnx.NodeProto.create({ name: 'w/add', opType: 'Add', input: ['w/m', 'w/b'], output: ['input'] }),
    );
  });
}

/** float16 [3, 224, 224] pixel values in, normalised in the graph; [1000] out; class names in metadata_props. */
function float16Batchless(labels: string[]): string {
  return wrapped('mobilenet-float16-batchless.onnx', (g, model) => {
    g.input = g.input.filter((i) => i.name !== 'input');
    g.input.unshift(onnx.ValueInfoProto.create(valueInfo('image', FLOAT16, [3, 224, 224])));
    g.initializer.push(
      onnx.TensorProto.create(floats('w/a', [3, 1, 1], STD.map((s) => 1 / 255 / s))),
      onnx.TensorProto.create(floats('w/b', [3, 1, 1], MEAN.map((m, c) => -m / (STD[c] as number)))),
    );
    g.node.unshift(
      onnx.NodeProto.create({ name: 'w/cast', opType: 'Cast', input: ['image'], output: ['w/f'], attribute: [int('to', FLOAT)] }),
      onnx.NodeProto.create({ name: 'w/mul', opType: 'Mul', input: ['w/f', 'w/a'], output: ['w/m'] }),
      onnx.NodeProto.create({ name: 'w/add', opType: 'Add', input: ['w/m', 'w/b'], output: ['w/n'] }),
      onnx.NodeProto.create({ name: 'w/unsqueeze', opType: 'Unsqueeze', input: ['w/n'], output: ['input'], attribute: [ints('axes', [0])] }),
    );
    for (const n of g.node) n.output = (n.output ?? []).map((o) => (o === 'output' ? 'w/logits' : o));
    g.node.push(onnx.NodeProto.create({ name: 'w/squeeze', opType: 'Squeeze', input: ['w/logits'], output: ['output'], attribute: [ints('axes', [0])] }));
    g.output = [onnx.ValueInfoProto.create(valueInfo('output', FLOAT, [1000]))];
    model.metadataProps = [
      onnx.StringStringEntryProto.create({ key: 'names', value: pythonNames(labels) }),
      onnx.StringStringEntryProto.create({ key: 'imgsz', value: '[224, 224]' }),
      onnx.StringStringEntryProto.create({ key: 'stride', value: '32' }),
    ];
  });
}

interface Prediction {
  label: string;
  index: number;
  score: number;
}

async function top5(app: FastifyInstance, model: string, photo: string): Promise<Prediction[]> {
  const res = await app.inject({
    method: 'POST',
    url: `/v1/models/${model}/predict`,
    headers: { 'content-type': photo.endsWith('.png') ? 'image/png' : 'image/jpeg' },
    payload: readFileSync(imagePath(photo)),
  });
  if (res.statusCode !== 200) throw new Error(`${model} on ${photo}: ${res.statusCode} ${res.body}`);
  return res.json<{ predictions: Prediction[] }>().predictions;
}

t.test('re-wrapped mobilenets (uint8 NHWC; float16 batchless with names in metadata) answer the original top-5', sharedTestOptions(MOBILENET, LABELS), async (t) => {
  const labels = readFileSync(modelPath('mobilenetv2-12-int8', 'labels.txt'), 'utf8').split('\n').filter((l) => l !== '');
  const original = sharedModel('mobilenetv2');
  const input = original['input'] as Record<string, Json>;
  const { sha256: _s, labels: _l, ...unlabelled } = original;
  const manifest = writeManifest([
    original,
    { ...original, name: 'mobilenet-uint8', sha256: null, source: uint8Nhwc(), input: { ...input, layout: 'NHWC', dtype: 'uint8' } },
    { ...unlabelled, name: 'mobilenet-float16', source: float16Batchless(labels), input: { ...input, scale: 1, mean: [0, 0, 0], std: [1, 1, 1] } },
  ].map((m) => Object.fromEntries(Object.entries(m).filter(([, v]) => v !== null))));
  const { app } = await buildTestApp(t, { manifestPath: manifest });

  const models = (await app.inject({ url: '/v1/models' })).json<{ models: { name: string; inputs?: { shape: number[]; datatype?: string }[] }[] }>().models;
  t.ok(models.some((m) => m.name === 'mobilenet-float16'), 'the float16 model loaded with no labels file');
  for (const photo of PHOTOS) {
    const want = await top5(app, 'mobilenetv2', photo);
    const u8 = await top5(app, 'mobilenet-uint8', photo);
    const f16 = await top5(app, 'mobilenet-float16', photo);
    t.same(u8.map((p) => p.label), want.map((p) => p.label), `${photo}: uint8 NHWC, same top-5 labels (${want[0]?.label})`);
    t.same(f16.map((p) => p.label), want.map((p) => p.label), `${photo}: float16 batchless, same top-5 labels from its metadata`);
    t.ok(u8.every((p, i) => Math.abs(p.score - (want[i]?.score ?? NaN)) < 1e-3), `${photo}: uint8 scores within 1e-3`);
    t.ok(f16.every((p, i) => Math.abs(p.score - (want[i]?.score ?? NaN)) < 1e-3), `${photo}: float16 scores within 1e-3`);
  }
});

t.test('a float16 model whose metadata stride the manifest size is not a multiple of fails to load, naming input.width', sharedTestOptions(MOBILENET, LABELS), async (t) => {
  const labels = readFileSync(modelPath('mobilenetv2-12-int8', 'labels.txt'), 'utf8').split('\n').filter((l) => l !== '');
  const source = float16Batchless(labels);
  const original = sharedModel('mobilenetv2');
  const { sha256: _s, labels: _l, ...entry } = original;
  // The wrapped model fixes 224, so the size check fires first for any other size: patch stride to one 224 is not a multiple of.
  const model = onnx.ModelProto.decode(readFileSync(source));
  model.metadataProps = model.metadataProps.map((p) => (p.key === 'stride' ? onnx.StringStringEntryProto.create({ key: 'stride', value: '48' }) : p));
  const patched = join(dir, 'stride48.onnx');
  writeFileSync(patched, onnx.ModelProto.encode(model).finish());
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([{ ...entry, name: 'odd-stride', source: patched }]), load: false });
  await app.ocular.models.loadAll().catch(() => undefined);
  const res = await app.inject({ url: '/v1/models/odd-stride' });
  t.match(res.body, /input\.width: 224 is not a multiple of the model's stride 48/);
});

t.test('a manifest whose model and labels are https:// URLs starts with no file beside it', sharedTestOptions(MOBILENET, LABELS), async (t) => {
  const tls = await makeCert();
  if (typeof tls === 'string') {
    t.comment(`SKIP: ${tls}`);
    return;
  }
  const modelBytes = readFileSync(modelPath('mobilenetv2-12-int8'));
  const labelBytes = readFileSync(modelPath('mobilenetv2-12-int8', 'labels.txt'));
  const hash = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const server = await startServer(t, tls, {
    '/m/model.onnx': (_req, res) => res.writeHead(200, { 'content-length': modelBytes.length }).end(modelBytes),
    '/m/labels.txt': (_req, res) => res.writeHead(200, { 'content-length': labelBytes.length }).end(labelBytes),
  });
  const caDir = mkdtempSync(join(tmpdir(), 'ocular-own-model-ca-'));
  const cacheDir = mkdtempSync(join(tmpdir(), 'ocular-own-model-cache-'));
  t.teardown(() => {
    rmSync(caDir, { recursive: true, force: true });
    rmSync(cacheDir, { recursive: true, force: true });
  });
  writeFileSync(join(caDir, 'ca.pem'), tls.cert);
  const manifestDir = mkdtempSync(join(tmpdir(), 'ocular-own-model-manifest-'));
  t.teardown(() => rmSync(manifestDir, { recursive: true, force: true }));
  const entry = {
    ...sharedModel('mobilenetv2'),
    name: 'remote',
    source: server.url('/m/model.onnx'),
    sha256: hash(modelBytes),
    labels: server.url('/m/labels.txt'),
    labelsSha256: hash(labelBytes),
  };
  const manifestPath = writeManifest([entry], manifestDir);
  t.same(readdirSync(manifestDir), ['manifest.json'], 'nothing beside the manifest');
  const { app } = await buildTestApp(t, { manifestPath, config: { cacheDir, sourceCaFile: join(caDir, 'ca.pem') } });
  const predictions = await top5(app, 'remote', 'cat_chelsea.png');
  t.equal(predictions[0]?.label, 'Egyptian cat', 'labels read from the downloaded file');
  t.same(server.requests.sort(), ['/m/labels.txt', '/m/model.onnx'], 'each downloaded once');
  t.ok(readdirSync(cacheDir).includes(`${hash(labelBytes)}.txt`), 'the labels cached under their hash');

  const badManifest = writeManifest([{ ...entry, name: 'bad-labels', labelsSha256: '0'.repeat(64) }], mkdtempSync(join(tmpdir(), 'ocular-own-model-bad-')));
  const bad = await buildTestApp(t, { manifestPath: badManifest, config: { cacheDir, sourceCaFile: join(caDir, 'ca.pem') }, load: false });
  await bad.app.ocular.models.loadAll().catch(() => undefined);
  t.match((await bad.app.inject({ url: '/v1/models/bad-labels' })).body, /labels file|download of .*labels\.txt has sha256/, 'a labels download whose sha256 differs fails the model');
});

t.test('a model with no labels file and no names in its metadata fails to load, naming labels', sharedTestOptions(MOBILENET), async (t) => {
  const { sha256: _s, labels: _l, ...entry } = sharedModel('mobilenetv2');
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([{ ...entry, name: 'nameless' }]), load: false });
  await app.ocular.models.loadAll().catch(() => undefined);
  t.match((await app.inject({ url: '/v1/models/nameless' })).body, /labels: no labels file given, and the model's metadata has no class names/);
});
