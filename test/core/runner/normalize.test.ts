import t from 'tap';
import { normalizeInto } from '../../../src/core/runner/normalize.js';
import type { NormalizeParams } from '../../../src/core/runner/normalize.js';

const TOLERANCE = 1e-6;

/** Deterministic pseudo-random 8-bit RGB pixels (LCG), so failures reproduce. */
function randomPixels(width: number, height: number, seed: number): Uint8Array {
  const out = new Uint8Array(width * height * 3);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

/**
 * The definition, written out directly and in float64: tensor channel c of pixel (x, y) is
 * (p * scale - mean[c]) / std[c], where p is the image's R, G, B for c = 0, 1, 2 (RGB) or B, G, R (BGR).
 * Returns the expected value at every index of the slot, or `pad` outside the image.
 */
function referenceSlot(
  pixels: Uint8Array,
  width: number,
  height: number,
  params: NormalizeParams,
  batchHeight: number,
  batchWidth: number,
  pad: number,
): Float64Array {
  const out = new Float64Array(3 * batchHeight * batchWidth).fill(pad);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const imageChannel = params.channelOrder === 'RGB' ? c : 2 - c;
        const p = pixels[(y * width + x) * 3 + imageChannel] as number;
        const value = (p * params.scale - (params.mean[c] as number)) / (params.std[c] as number);
        const at =
          params.layout === 'NCHW'
            ? (c * batchHeight + y) * batchWidth + x
            : (y * batchWidth + x) * 3 + c;
        out[at] = value;
      }
    }
  }
  return out;
}

function maxDiffAt(target: Float32Array, offset: number, expected: Float64Array): number {
  let m = 0;
  for (let i = 0; i < expected.length; i++) {
    m = Math.max(m, Math.abs((target[offset + i] as number) - (expected[i] as number)));
  }
  return m;
}

const imagenet: Omit<NormalizeParams, 'layout' | 'channelOrder'> = {
  scale: 1 / 255,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

const cases: { name: string; params: NormalizeParams }[] = [
  { name: 'NCHW RGB with ImageNet mean/std', params: { layout: 'NCHW', channelOrder: 'RGB', ...imagenet } },
  { name: 'NCHW BGR with ImageNet mean/std', params: { layout: 'NCHW', channelOrder: 'BGR', ...imagenet } },
  { name: 'NHWC RGB with p/127.5 - 1', params: { layout: 'NHWC', channelOrder: 'RGB', scale: 1 / 127.5, mean: [1, 1, 1], std: [1, 1, 1] } },
  { name: 'NHWC BGR with per-channel mean/std', params: { layout: 'NHWC', channelOrder: 'BGR', scale: 1, mean: [10, 20, 30], std: [2, 4, 8] } },
];

for (const { name, params } of cases) {
  t.test(`${name}: matches the definition for an image that fills its slot`, async (t) => {
    const [w, h] = [7, 5];
    const pixels = randomPixels(w, h, 1);
    const target = new Float32Array(3 * w * h);
    normalizeInto(pixels, w, h, params, target, 0, h, w);
    const diff = maxDiffAt(target, 0, referenceSlot(pixels, w, h, params, h, w, 0));
    t.ok(diff <= TOLERANCE, `max |diff| ${diff}`);
  });

  t.test(`${name}: pads a wider and taller slot at batch index 1, leaving other slots alone`, async (t) => {
    const [w, h, bw, bh] = [6, 3, 9, 4];
    const slot = 3 * bw * bh;
    const pixels = randomPixels(w, h, 2);
    const target = new Float32Array(3 * slot).fill(42);
    normalizeInto(pixels, w, h, params, target, 1, bh, bw, -7);
    const diff = maxDiffAt(target, slot, referenceSlot(pixels, w, h, params, bh, bw, -7));
    t.ok(diff <= TOLERANCE, `max |diff| ${diff}`);
    t.ok(target.subarray(0, slot).every((v) => v === 42), 'slot 0 untouched');
    t.ok(target.subarray(2 * slot).every((v) => v === 42), 'slot 2 untouched');
  });
}

t.test('the last slot of a batch is written in place', async (t) => {
  const params: NormalizeParams = { layout: 'NCHW', channelOrder: 'RGB', ...imagenet };
  const [w, h] = [4, 4];
  const slot = 3 * w * h;
  const pixels = randomPixels(w, h, 3);
  const target = new Float32Array(4 * slot);
  normalizeInto(pixels, w, h, params, target, 3, h, w);
  t.ok(maxDiffAt(target, 3 * slot, referenceSlot(pixels, w, h, params, h, w, 0)) <= TOLERANCE);
  t.ok(target.subarray(0, 3 * slot).every((v) => v === 0), 'earlier slots untouched');
});

t.test('padding defaults to 0 after normalisation', async (t) => {
  const params: NormalizeParams = { layout: 'NHWC', channelOrder: 'RGB', ...imagenet };
  const target = new Float32Array(3 * 4 * 4).fill(9);
  normalizeInto(randomPixels(2, 2, 4), 2, 2, params, target, 0, 4, 4);
  t.equal(target[target.length - 1], 0);
});

t.test('wrong sizes are refused with a RangeError', async (t) => {
  const params: NormalizeParams = { layout: 'NCHW', channelOrder: 'RGB', ...imagenet };
  const target = new Float32Array(3 * 4 * 4);
  t.throws(() => normalizeInto(new Uint8Array(3 * 4 * 4 - 1), 4, 4, params, target, 0, 4, 4), RangeError, 'short pixel buffer');
  t.throws(() => normalizeInto(randomPixels(5, 4, 5), 5, 4, params, target, 0, 4, 4), RangeError, 'image wider than the slot');
  t.throws(() => normalizeInto(randomPixels(4, 5, 6), 4, 5, params, target, 0, 4, 4), RangeError, 'image taller than the slot');
  t.throws(() => normalizeInto(randomPixels(4, 4, 7), 4, 4, params, target, 1, 4, 4), RangeError, 'slot outside the tensor');
});
