/**
 * The image input types exports use (src/core/runner/image-feed.ts): float32, float16 and uint8, NCHW and NHWC,
 * with and without a batch dimension. Each variant is a tiny model written with onnx-proto whose output is its input
 * (cast to float32), run by a real session pool, so what the test reads is exactly what reached the model; the
 * expected tensor is computed here, independently, from the pixels and the formula in input-spec.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { halfToNumber, numberToHalf } from '../../../src/core/tensor-codec.js';
import { fromHalves, imageFeedPlanOf, toHalves } from '../../../src/core/runner/image-feed.js';
import { arrangePixelsInto, type NormalizeParams } from '../../../src/core/runner/normalize.js';
import { createSessionPool, type SessionPool } from '../../../src/core/runner/session-pool.js';
import { cpuPoolOptions } from '../../helpers/pool-options.js';
import type { PreparedPixels } from '../../../src/core/types.js';
import { encodeModel } from '../../v2/helpers.js';

t.setTimeout(60_000);

const FLOAT = 1;
const UINT8 = 2;
const FLOAT16 = 10;
const ELEM = { float32: FLOAT, float16: FLOAT16, uint8: UINT8 } as const;
type InputType = keyof typeof ELEM;

const dir = mkdtempSync(join(tmpdir(), 'ocular-image-feed-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** Deterministic pseudo-random RGB pixels. */
function pixels(width: number, height: number, seed: number): PreparedPixels {
  const data = new Uint8Array(width * height * 3);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < data.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = x & 0xff;
  }
  return { pixels: data, width, height };
}

/** y (float32) = the input x, cast: what reaches the model, read back. */
function echoModel(type: InputType, dims: (number | string)[]): string {
  const nodes = type === 'float32'
    ? [{ opType: 'Identity', input: ['x'], output: ['y'] }]
    : [{ opType: 'Cast', input: ['x'], output: ['y'], attribute: [{ name: 'to', i: FLOAT, type: 2 }] }];
  const path = join(dir, `${type}-${dims.join('x')}.onnx`);
  writeFileSync(path, encodeModel(nodes, [['x', ELEM[type], dims]], [['y', FLOAT, dims]]));
  return path;
}

/**
 * What the model must see for `image` in row `row` of a batch: element (c, y, x) is the pixel's channel (the
 * channel order's), as it is for uint8, else (p * scale - mean[c]) / std[c], rounded to a half float for float16.
 */
function expected(type: InputType, params: NormalizeParams, images: PreparedPixels[], h: number, w: number): number[] {
  const out: number[] = [];
  const value = (img: PreparedPixels, c: number, y: number, x: number): number => {
    const src = params.channelOrder === 'RGB' ? c : 2 - c;
    const p = img.pixels[(y * img.width + x) * 3 + src] as number;
    if (type === 'uint8') return p;
    const v = (p * params.scale - params.mean[c]!) / params.std[c]!;
    return type === 'float16' ? halfToNumber(numberToHalf(v)) : v;
  };
  for (const img of images) {
    if (params.layout === 'NCHW') {
      for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out.push(value(img, c, y, x));
    } else {
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) out.push(value(img, c, y, x));
    }
  }
  return out;
}

async function openPool(t: Test, modelPath: string, normalize: NormalizeParams): Promise<SessionPool> {
  const pool = await createSessionPool(cpuPoolOptions('echo', modelPath, { normalize }));
  t.teardown(() => pool.close());
  return pool;
}

function closeTo(t: Test, actual: ArrayLike<number>, want: readonly number[], tolerance: (v: number) => number, what: string): void {
  t.equal(actual.length, want.length, `${what}: element count`);
  let bad = -1;
  for (let i = 0; i < want.length && bad === -1; i++) if (!(Math.abs((actual[i] as number) - want[i]!) <= tolerance(want[i]!))) bad = i;
  t.equal(bad, -1, bad === -1 ? `${what}: every element as expected` : `${what}: element ${bad} is ${actual[bad]}, expected ${want[bad]}`);
}

const H = 4;
const W = 5;
const IMAGENET_BGR: Omit<NormalizeParams, 'layout'> = { channelOrder: 'BGR', scale: 1 / 255, mean: [0.406, 0.456, 0.485], std: [0.225, 0.224, 0.229] };

for (const type of ['float32', 'float16', 'uint8'] as const) {
  for (const layout of ['NCHW', 'NHWC'] as const) {
    for (const batched of [true, false]) {
      const name = `${type} ${layout} ${batched ? 'with' : 'without'} a batch dimension`;
      t.test(`${name}: the model receives the expected tensor`, async (t) => {
        const spatial = layout === 'NCHW' ? [3, H, W] : [H, W, 3];
        const dims = batched ? ['N', ...spatial] : spatial;
        const params: NormalizeParams = { layout, ...IMAGENET_BGR };
        const pool = await openPool(t, echoModel(type, dims), params);
        const [input] = pool.info.inputs;
        t.same(input?.shape, [batched ? -1 : 1, ...spatial], 'reported with a batch dimension (1 where the model has none)');
        t.equal(input?.type, type, "reported in the model's own type");
        t.same(pool.info.outputs[0]?.shape, [batched ? -1 : 1, ...spatial]);
        const images = batched ? [pixels(W, H, 1), pixels(W, H, 2)] : [pixels(W, H, 3)];
        const out = await pool.runImages({ items: images, tensorHeight: H, tensorWidth: W });
        const y = out['y'];
        t.same(y?.dims, [images.length, ...spatial], 'outputs carry the batch dimension');
        const tolerance = type === 'float32' ? (v: number) => 1e-5 * Math.max(1, Math.abs(v)) : type === 'float16' ? (v: number) => 2 ** -10 * Math.max(1, Math.abs(v)) : () => 0;
        closeTo(t, y?.data ?? [], expected(type, params, images, H, W), tolerance, name);
        if (!batched) {
          await t.rejects(pool.runImages({ items: [pixels(W, H, 4), pixels(W, H, 5)], tensorHeight: H, tensorWidth: W }), /one image at a time/, 'two images in one run are refused');
          const raw = await pool.runTensors({ x: { type, data: type === 'float32' ? new Float32Array(3 * H * W) : type === 'float16' ? new Uint16Array(3 * H * W) : new Uint8Array(3 * H * W), dims: [1, ...spatial] } });
          t.same(raw['y']?.dims, [1, ...spatial], 'raw tensors too: fed without the batch dimension, answered with it');
        }
      });
    }
  }
}

t.test('a uint8 model gets the pixels as they are: no scale, mean or std', async (t) => {
  const params: NormalizeParams = { layout: 'NHWC', channelOrder: 'RGB', scale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] };
  const pool = await openPool(t, echoModel('uint8', [1, H, W, 3]), params);
  const image = pixels(W, H, 7);
  const out = await pool.runImages({ items: [image], tensorHeight: H, tensorWidth: W });
  t.same([...(out['y']?.data ?? [])], [...image.pixels]);
});

t.test('a float16 output is decoded from its half bits, not read as integers', async (t) => {
  const path = join(dir, 'half-out.onnx');
  writeFileSync(path, encodeModel([{ opType: 'Identity', input: ['x'], output: ['y'] }], [['x', FLOAT16, [1, 3, 1, 2]]], [['y', FLOAT16, [1, 3, 1, 2]]]));
  const params: NormalizeParams = { layout: 'NCHW', channelOrder: 'RGB', scale: 1 / 4, mean: [0, 0, 0], std: [1, 1, 1] };
  const pool = await openPool(t, path, params);
  const out = await pool.runImages({ items: [{ pixels: new Uint8Array([1, 2, 3, 4, 5, 6]), width: 2, height: 1 }], tensorHeight: 1, tensorWidth: 2 });
  t.same([...(out['y']?.data ?? [])], [0.25, 1, 0.5, 1.25, 0.75, 1.5]);
  t.equal(out['y']?.exact?.type, 'float16', 'the exact tensor keeps its own type for the v2 answer');
});

t.test('a smaller image in a larger slot is padded: normalised pad value, or a clamped byte for uint8', async (t) => {
  const params: NormalizeParams = { layout: 'NCHW', channelOrder: 'RGB', scale: 1, mean: [0, 0, 0], std: [1, 1, 1] };
  const pool = await openPool(t, echoModel('uint8', ['N', 3, 'H', 'W']), params);
  const image = { pixels: new Uint8Array(3 * 2 * 2).fill(9), width: 2, height: 2 };
  const out = await pool.runImages({ items: [image], tensorHeight: 2, tensorWidth: 3, padValue: 300 });
  t.same([...(out['y']?.data ?? [])], [9, 9, 255, 9, 9, 255, 9, 9, 255, 9, 9, 255, 9, 9, 255, 9, 9, 255]);
});

t.test('arrangePixelsInto places channels by layout and order, and refuses what does not fit', async (t) => {
  const px = new Uint8Array([1, 2, 3, 4, 5, 6]); // two pixels, 2x1
  const nchw = new Uint8Array(6);
  arrangePixelsInto(px, 2, 1, { layout: 'NCHW', channelOrder: 'BGR' }, nchw, 0, 1, 2);
  t.same([...nchw], [3, 6, 2, 5, 1, 4]);
  const nhwc = new Uint8Array(6);
  arrangePixelsInto(px, 2, 1, { layout: 'NHWC', channelOrder: 'BGR' }, nhwc, 0, 1, 2);
  t.same([...nhwc], [3, 2, 1, 6, 5, 4]);
  t.throws(() => arrangePixelsInto(px, 2, 1, { layout: 'NHWC', channelOrder: 'RGB' }, new Uint8Array(6), 1, 1, 2), /outside the target/);
  t.throws(() => arrangePixelsInto(px, 2, 1, { layout: 'NHWC', channelOrder: 'RGB' }, new Uint8Array(6), 0, 1, 1), /does not fit/);
});

t.test('half floats: every value survives a round trip, and float32 values round to nearest even', async (t) => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const decoded = fromHalves(all);
  const back = new Uint16Array(65536);
  toHalves(decoded, back);
  let mismatch = -1;
  for (let h = 0; h < 65536 && mismatch === -1; h++) {
    const nan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (!nan && back[h] !== h) mismatch = h;
  }
  t.equal(mismatch, -1, 'every non-NaN half decodes and encodes back to itself');
  const out = new Uint16Array(5);
  toHalves(new Float32Array([1, 0.1, 65520, 2 ** -25, -2]), out);
  t.same([...fromHalves(out)], [1, 0.0999755859375, Infinity, 0, -2], '0.1 rounds, 65520 overflows, 2^-25 ties to 0');
});

t.test('an input that is no image input is refused by the plan', async (t) => {
  t.throws(() => imageFeedPlanOf({ name: 'x', type: 'int64', shape: [1, 3, 4, 4], symbolicShape: [] }), /int64; image inputs may be float32, float16, uint8/);
  t.throws(() => imageFeedPlanOf({ name: 'x', type: 'float32', shape: [3, 4], symbolicShape: [] }), /rank 2/);
  t.same(imageFeedPlanOf({ name: 'x', type: 'float16', shape: [3, 4, 4], symbolicShape: [] }), { type: 'float16', batchless: true });
});
