/**
 * The uint8 prefix (src/core/runner/uint8-prefix.ts) on tiny models written with onnx-proto: read back with
 * onnx-proto's decoder (an independent reader of what our wire writer wrote), run by onnxruntime against
 * normalizeInto + the original model, refused where it cannot apply; the padding pixel and the pixel copy the worker
 * uses with it; and the loader's decision (src/core/uint8-model.ts).
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import t from 'tap';
import { InputSpecSchema } from '../../../src/config/input-spec.js';
import { bytesField, concat, intField, readFields } from '../../../src/core/onnx-wire.js';
import { copyPixelsInto, nearestPadPixelOf, normalizeInto, padPixelOf, type NormalizeParams } from '../../../src/core/runner/normalize.js';
import { addUint8Prefix, PIXELS_INPUT, PrefixError, pixelDimsOf } from '../../../src/core/runner/uint8-prefix.js';
import { decideUint8Input, prepareUint8Model } from '../../../src/core/uint8-model.js';

const { onnx } = onnxProto;
const FLOAT = 1;
const UINT8 = 2;

type Dim = number | string;
/** y = Identity(x), x float [dims]; or of another type / opset / IR where asked. */
function identityModel(dims: Dim[], o: { elemType?: number; opset?: number; ir?: number; name?: string } = {}): Buffer {
  const shape = { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) };
  const type = { tensorType: { elemType: o.elemType ?? FLOAT, shape } };
  const model = onnx.ModelProto.create({
    irVersion: o.ir ?? 8,
    producerName: 'ocular-tests',
    opsetImport: [{ domain: '', version: o.opset ?? 13 }],
    graph: {
      name: 'tiny',
      node: [{ opType: 'Identity', input: [o.name ?? 'x'], output: ['y'], name: 'id' }],
      input: [{ name: o.name ?? 'x', type }],
      output: [{ name: 'y', type }],
    },
  });
  return Buffer.from(onnx.ModelProto.encode(model).finish());
}

const BGR_NCHW: NormalizeParams = { layout: 'NCHW', channelOrder: 'BGR', scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
const RGB_NHWC: NormalizeParams = { layout: 'NHWC', channelOrder: 'RGB', scale: 2 / 255, mean: [1, 1, 1], std: [1, 1, 1] };
const PLAIN: NormalizeParams = { layout: 'NCHW', channelOrder: 'RGB', scale: 1, mean: [0, 0, 0], std: [1, 1, 1] };

t.test('the combined model, read back: the prefix in front, the original graph unchanged', async (t) => {
  const original = identityModel(['N', 3, 'H', 'W']);
  const { model, original: meta } = addUint8Prefix(original, BGR_NCHW);
  const decoded = onnx.ModelProto.decode(model);
  const graph = decoded.graph as onnxProto.onnx.GraphProto;
  t.same(graph.input.map((i) => i.name), [PIXELS_INPUT], 'the image input replaced by the pixels input');
  const pixels = graph.input[0]?.type?.tensorType;
  t.equal(pixels?.elemType, UINT8);
  t.same(pixels?.shape?.dim?.map((d) => d.dimParam || Number(d.dimValue)), ['N', 'H', 'W', 3], 'NHWC, the original dims kept with their names');
  t.same(graph.node.map((n) => n.opType), ['Gather', 'Transpose', 'Cast', 'Mul', 'Add', 'Identity'], 'BGR gather and transpose on bytes, then cast and the affine');
  t.equal(graph.node[4]?.output?.[0], 'x', "the prefix's last output is the original input");
  t.same(graph.initializer.map((i) => i.name).sort(), ['ocular_u8/channels', 'ocular_u8/offset', 'ocular_u8/scale']);
  t.same(graph.output.map((o) => o.name), ['y']);
  t.equal(decoded.producerName, 'ocular-tests', 'model fields kept');
  t.same(meta, { name: 'x', type: 'float32', shape: [-1, 3, -1, -1], symbolicShape: ['N', '', 'H', 'W'] }, 'the original input, as onnxruntime would report it');

  const plain = onnx.ModelProto.decode(addUint8Prefix(original, PLAIN).model).graph as onnxProto.onnx.GraphProto;
  t.same(plain.node.map((n) => n.opType), ['Transpose', 'Cast', 'Identity'], 'scale 1, mean 0, std 1, RGB: no gather, no affine');
  const nhwc = onnx.ModelProto.decode(addUint8Prefix(identityModel([1, 5, 7, 3]), RGB_NHWC).model).graph as onnxProto.onnx.GraphProto;
  t.same(nhwc.node.map((n) => n.opType), ['Cast', 'Mul', 'Add', 'Identity'], 'NHWC RGB: no transpose');
});

t.test('fields the schema does not know are kept byte for byte', async (t) => {
  // Field 99 in the model and in its graph: unknown to ONNX 1.10's schema, which would drop them on re-encoding.
  const fields = readFields(identityModel([1, 3, 4, 4]));
  const patched = concat(fields.map((f) => (f.field === 7 ? bytesField(7, concat([f.value as Uint8Array, intField(99, 12345)])) : f.raw)).concat(intField(99, 777)));
  const out = readFields(addUint8Prefix(patched, PLAIN).model);
  t.same(out.filter((f) => f.field === 99).map((f) => f.value), [777]);
  const graph = out.find((f) => f.field === 7)?.value as Uint8Array;
  t.same(readFields(graph).filter((f) => f.field === 99).map((f) => f.value), [12345]);
});

t.test('onnxruntime runs the combined model on uint8 pixels as the original runs on normalizeInto', async (t) => {
  const h = 5;
  const w = 7;
  const pixels = Uint8Array.from({ length: h * w * 3 }, (_, i) => (i * 37 + 11) % 256);
  for (const [label, params] of [['BGR NCHW', BGR_NCHW], ['RGB NHWC', RGB_NHWC], ['plain NCHW', PLAIN]] as const) {
    const dims = params.layout === 'NCHW' ? [1, 3, h, w] : [1, h, w, 3];
    const original = identityModel(params.layout === 'NCHW' ? ['N', 3, 'H', 'W'] : ['N', 'H', 'W', 3]);
    const floats = new Float32Array(h * w * 3);
    normalizeInto(pixels, w, h, params, floats, 0, h, w);
    const a = await ort.InferenceSession.create(original);
    const b = await ort.InferenceSession.create(addUint8Prefix(original, params).model);
    const expected = (await a.run({ x: new ort.Tensor('float32', floats, dims) }))['y'];
    const got = (await b.run({ [PIXELS_INPUT]: new ort.Tensor('uint8', pixels, pixelDimsOf(dims, params.layout)) }))['y'];
    t.same(got?.dims, dims, `${label}: dims`);
    let diff = 0;
    const e = expected?.data as Float32Array;
    const g = got?.data as Float32Array;
    for (let i = 0; i < e.length; i++) diff = Math.max(diff, Math.abs((e[i] as number) - (g[i] as number)));
    t.ok(diff <= 1e-6, `${label}: max |diff| ${diff.toExponential(2)} <= 1e-6`);
    await a.release();
    await b.release();
  }
});

t.test('models the prefix cannot take are refused with the reason', async (t) => {
  // ownInput: an input the runner feeds in its own type (a uint8, float16 or batchless export), no failure.
  const cases: [string, Buffer, RegExp, boolean][] = [
    ['uint8 input', identityModel([1, 3, 4, 4], { elemType: UINT8 }), /not float32/, true],
    ['rank 3', identityModel([3, 4, 4]), /rank 3, not 4/, true],
    ['4 channels', identityModel([1, 4, 4, 4]), /4 channels on axis 1/, false],
    ['opset 6', identityModel([1, 3, 4, 4], { opset: 6 }), /opset 6/, false],
    ['IR 3', identityModel([1, 3, 4, 4], { ir: 3 }), /IR version 3/, false],
    ['our namespace', identityModel([1, 3, 4, 4], { name: 'ocular_u8/x' }), /already holds the name/, false],
  ];
  for (const [label, model, message, ownInput] of cases) t.throws(() => addUint8Prefix(model, PLAIN), { name: 'PrefixError', message, ownInput }, label);
  t.throws(() => addUint8Prefix(identityModel([1, 3, 4, 4]), PLAIN, 'images'), { message: /no input named 'images'/ });
  t.throws(() => addUint8Prefix(Buffer.from([0x0a, 0xff]), PLAIN), { name: 'WireError' }, 'bytes that are no protobuf message');
  t.ok(new PrefixError('x') instanceof Error);
});

t.test('the padding pixel: what normalises to the pad value, where a pixel does', async (t) => {
  t.same(padPixelOf(PLAIN, 0), [0, 0, 0]);
  t.same(padPixelOf({ ...PLAIN, channelOrder: 'BGR', mean: [10, 20, 30] }, 0), [30, 20, 10], 'per image channel, BGR reversed');
  t.same(padPixelOf(RGB_NHWC, -1), [0, 0, 0], '(0 * 2/255 - 1) = -1');
  t.equal(padPixelOf({ ...PLAIN, scale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }, 0), undefined, 'the OCR recogniser: pixel 127.5');
  t.equal(padPixelOf(PLAIN, 300), undefined, 'past 255');
});

t.test('the nearest padding pixel: for padding the answer does not read (a size bucket\'s rest)', async (t) => {
  const imagenetBgr: NormalizeParams = { layout: 'NCHW', channelOrder: 'BGR', scale: 1 / 255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
  // BGR: tensor channel 0 (mean 0.485) reads the image's B, so B = round(0.485 * 255) = 124, G 116, R round(103.53) = 104.
  const { pixel, error } = nearestPadPixelOf(imagenetBgr, 0);
  t.same(pixel, [104, 116, 124], 'ImageNet mean, in image channel order R, G, B');
  t.equal(padPixelOf(imagenetBgr, 0), undefined, 'no pixel gives exactly 0');
  t.ok(error > 0 && error < 0.01, `normalises within ${error.toFixed(4)} of 0`);
  for (let c = 0; c < 3; c++) {
    const tc = 2 - c; // BGR: image channel c is tensor channel 2 - c
    const x = ((pixel[c] as number) * imagenetBgr.scale - (imagenetBgr.mean[tc] as number)) / (imagenetBgr.std[tc] as number);
    t.ok(Math.abs(x) <= error + 1e-12, `image channel ${c} normalises to ${x.toFixed(4)}`);
  }
  t.same(nearestPadPixelOf(PLAIN, 0), { pixel: [0, 0, 0], error: 0 }, 'exact where padPixelOf is');
  t.same(nearestPadPixelOf(PLAIN, 300).pixel, [255, 255, 255], 'clamped to 255');
  // What the worker pads a bucket with: the slot's rest holds the nearest pixel.
  const target = new Uint8Array(2 * 2 * 3);
  copyPixelsInto(Uint8Array.from([1, 2, 3]), 1, 1, target, 0, 2, 2, pixel);
  t.same([...target], [1, 2, 3, 104, 116, 124, 104, 116, 124, 104, 116, 124]);
});

t.test('copyPixelsInto: rows copied into the slot, the rest padded', async (t) => {
  const pixels = Uint8Array.from({ length: 2 * 3 * 3 }, (_, i) => i + 1); // 3 wide, 2 high
  const target = new Uint8Array(2 * 3 * 4 * 3).fill(99); // two slots of 4 wide, 3 high
  copyPixelsInto(pixels, 3, 2, target, 1, 3, 4, [7, 8, 9]);
  t.same([...target.subarray(0, 36)], new Array(36).fill(99), 'slot 0 untouched');
  const slot = [...target.subarray(36)];
  t.same(slot.slice(0, 9), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'row 0');
  t.same(slot.slice(9, 12), [7, 8, 9], 'row 0 padded');
  t.same(slot.slice(12, 21), [10, 11, 12, 13, 14, 15, 16, 17, 18], 'row 1');
  t.same(slot.slice(24, 36), [7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8, 9], 'row 2: padding');
  t.throws(() => copyPixelsInto(pixels, 3, 2, target, 0, 3, 4, undefined), /needs padding/);
  t.throws(() => copyPixelsInto(pixels, 3, 2, target, 2, 3, 4, [0, 0, 0]), /outside the target/);
  t.throws(() => copyPixelsInto(pixels, 5, 2, target, 0, 3, 4, [0, 0, 0]), /holds 18 bytes/);
  const exact = new Uint8Array(18);
  copyPixelsInto(pixels, 3, 2, exact, 0, 2, 3, undefined);
  t.same([...exact], [...pixels], 'an image the size of its slot: a plain copy, no pad pixel needed');
});

t.test('the loader: which stages take uint8, and the cached combined model', async (t) => {
  const spec = (uint8Input: string, extra: object = {}) => InputSpecSchema.parse({ width: 4, height: 4, uint8Input, ...extra });
  t.same(decideUint8Input(spec('gpu'), 'cuda', undefined), { use: true });
  t.same(decideUint8Input(spec('gpu'), 'webgpu', undefined), { use: true });
  t.match(decideUint8Input(spec('gpu'), 'cpu', undefined), { use: false, reason: /CPU provider/ });
  t.same(decideUint8Input(spec('always'), 'cpu', undefined), { use: true });
  t.match(decideUint8Input(spec('off'), 'cuda', undefined), { use: false });
  t.same(decideUint8Input(spec('always', { scale: 1 }), 'cpu', 0), { use: true }, 'padding with 0 = pixel 0');
  t.match(decideUint8Input(spec('always', { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }), 'cuda', 0), { use: false, reason: /pads its items with 0/ });
  t.equal(InputSpecSchema.parse({ width: 4, height: 4 }).uint8Input, 'gpu', 'the default');

  const dir = mkdtempSync(join(tmpdir(), 'ocular-uint8-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const modelPath = join(dir, 'model.onnx');
  writeFileSync(modelPath, identityModel(['N', 3, 4, 4]));
  const a = await prepareUint8Model(modelPath, spec('always'), join(dir, 'cache'), true);
  t.match(a.modelPath, /uint8\/[0-9a-f]{64}\.onnx$/);
  t.equal(a.floatSession, true);
  t.equal(a.original.name, 'x');
  const mtime = statSync(a.modelPath).mtimeMs;
  const b = await prepareUint8Model(modelPath, spec('always'), join(dir, 'cache'), false);
  t.equal(b.modelPath, a.modelPath, 'the same inputs: the same file');
  t.equal(statSync(b.modelPath).mtimeMs, mtime, 'reused, not written again');
  const c = await prepareUint8Model(modelPath, spec('always', { channelOrder: 'BGR' }), join(dir, 'cache'), false);
  t.not(c.modelPath, a.modelPath, 'another normalisation: another file');
  t.same((onnx.ModelProto.decode(readFileSync(c.modelPath)).graph as onnxProto.onnx.GraphProto).node.map((n) => n.opType), ['Gather', 'Transpose', 'Cast', 'Mul', 'Identity']);
});
