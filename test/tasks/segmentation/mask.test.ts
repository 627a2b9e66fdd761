/**
 * Segmentation postprocessing (src/tasks/segmentation/mask.ts, rle.ts, png.ts) on small hand-made outputs: the
 * RLE string form against hand-worked values and an independent reader (test/helpers/coco-rle.ts), layouts,
 * upsampling geometry, filters, the PNG read back by sharp, and the byte limit. The mask threads are tested too.
 */
import sharp from 'sharp';
import t from 'tap';
import { MaskTooLargeError, buildMask, classMapOf, type MaskJob } from '../../../src/tasks/segmentation/mask.js';
import { MaskPool } from '../../../src/tasks/segmentation/mask-pool.js';
import { encodeRleCounts } from '../../../src/tasks/segmentation/rle.js';
import { OcularError } from '../../../src/errors.js';
import { countsFromString, decodeRle } from '../../helpers/coco-rle.js';

/** NHWC logits of an h x w grid whose class at (y, x) is classAt(x, y): 1 there, 0 elsewhere. */
function logitsNhwc(w: number, h: number, classes: number, classAt: (x: number, y: number) => number): Float32Array {
  const data = new Float32Array(w * h * classes);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data[(y * w + x) * classes + classAt(x, y)] = 1;
  return data;
}

function nhwcToNchw(data: Float32Array, w: number, h: number, c: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let k = 0; k < c; k++) out[k * h * w + y * w + x] = data[(y * w + x) * c + k] as number;
  return out;
}

/** A job for an output grid of the input's own size, stretched from an original of ow x oh. */
function job(data: Float32Array, dims: number[], over: Partial<MaskJob> & { originalWidth: number; originalHeight: number }): MaskJob {
  const [inW, inH] = [over.inputWidth ?? 4, over.inputHeight ?? 4];
  return {
    data,
    dims,
    layout: 'NHWC',
    classCount: 3,
    upsample: 'nearest',
    inputWidth: inW,
    inputHeight: inH,
    scaleX: inW / over.originalWidth,
    scaleY: inH / over.originalHeight,
    offsetX: 0,
    offsetY: 0,
    keep: undefined,
    minArea: 0,
    format: 'rle',
    maxBytes: 1 << 20,
    ...over,
  };
}

t.test('RLE strings are written as pycocotools writes them (hand-worked values)', async (t) => {
  t.equal(encodeRleCounts([0, 5]), '05');
  t.equal(encodeRleCounts([3, 2, 4]), '324', 'the third count is written as is');
  t.equal(encodeRleCounts([1, 2, 3, 40]), '123V1', 'from the fourth on, the difference from two before (38: two 5-bit groups)');
  t.equal(encodeRleCounts([1, 10, 3, 2]), '1:3H', 'a negative difference carries its sign in the last group');
  for (const counts of [[0, 5], [7], [1, 2, 3, 40], [1, 10, 3, 2], [123456, 1, 987654, 33, 0, 2 ** 30]]) {
    t.same(countsFromString(encodeRleCounts(counts)), counts, `${counts.join(',')} reads back`);
  }
});

t.test('masks run down the columns, zeros first, and read back to the class map', async (t) => {
  // 3 x 2 original, class 1 on the left column and at (2, 1), class 2 at (1, 0), class 0 elsewhere.
  const cls = (x: number, y: number) => (x === 0 || (x === 2 && y === 1) ? 1 : x === 1 && y === 0 ? 2 : 0);
  const r = buildMask(job(logitsNhwc(3, 2, 3, cls), [1, 2, 3, 3], { inputWidth: 3, inputHeight: 2, originalWidth: 3, originalHeight: 2 }));
  t.same(r.classes.map((c) => c.index), [0, 1, 2]);
  const one = r.classes[1];
  t.equal(one?.counts, '023O', 'class 1: counts [0, 2, 3, 1] in column-major order (the fourth written as 1 - 2 = -1)');
  t.same(one?.box, { x1: 0, y1: 0, x2: 3, y2: 2 });
  t.equal(one?.area, 3);
  for (const c of r.classes) {
    const mask = decodeRle({ size: [2, 3], counts: c.counts ?? '' });
    for (let y = 0; y < 2; y++) for (let x = 0; x < 3; x++) t.equal(mask[y * 3 + x], cls(x, y) === c.index ? 1 : 0, `class ${c.index} at (${x}, ${y})`);
  }
});

t.test('NCHW logits give the same masks as NHWC', async (t) => {
  const cls = (x: number, y: number) => (x + 2 * y) % 3;
  const nhwc = logitsNhwc(4, 4, 3, cls);
  const a = buildMask(job(nhwc.slice(), [1, 4, 4, 3], { originalWidth: 9, originalHeight: 7 }));
  const b = buildMask(job(nhwcToNchw(nhwc, 4, 4, 3), [1, 3, 4, 4], { layout: 'NCHW', originalWidth: 9, originalHeight: 7 }));
  t.same(b, a);
});

t.test('a class-map output ([N,H,W] or [N,1,H,W]) is read as class indices; values that are no class are void', async (t) => {
  const map = Float32Array.from([0, 1, 2, 7, 1, 1, 0, -1, 2, 2, 2, 2, 0, 0, 0, 0]);
  for (const dims of [[1, 4, 4], [1, 1, 4, 4]]) {
    const full = classMapOf(job(map.slice(), dims, { layout: 'class-map', originalWidth: 4, originalHeight: 4 }));
    t.same(Array.from(full), Array.from(map, (v) => (v >= 0 && v < 3 ? v : 255)), `dims [${dims.join(',')}]`);
  }
});

t.test('nearest upsampling takes the output cell each original pixel centre falls in', async (t) => {
  // 2 x 1 output grid over a 2 x 1 input; an original 5 px wide: centres 0.5..4.5 of 5 -> cells 0,0,(2.5/5*2=1),1,1
  const data = logitsNhwc(2, 1, 3, (x) => x + 1);
  const full = classMapOf(job(data, [1, 1, 2, 3], { inputWidth: 2, inputHeight: 1, originalWidth: 5, originalHeight: 1 }));
  t.same(Array.from(full), [1, 1, 2, 2, 2]);
});

t.test('bilinear upsampling interpolates the logits between cell centres, then takes the argmax', async (t) => {
  // Class 1 logit falls 1 -> 0 across a 2-cell row, class 2 rises 0 -> 1: they cross at the middle.
  const data = Float32Array.from([0, 1, 0, 0, 0, 1]);
  const base = { inputWidth: 2, inputHeight: 1, originalWidth: 8, originalHeight: 1 };
  const bilinear = classMapOf(job(data.slice(), [1, 1, 2, 3], { ...base, upsample: 'bilinear' }));
  t.same(Array.from(bilinear), [1, 1, 1, 1, 2, 2, 2, 2]);
  // Shift the crossing: class 2's right cell is 3, so interpolated class 2 wins from a quarter of the way.
  const skew = Float32Array.from([0, 1, 0, 0, 0, 3]);
  const full = classMapOf(job(skew, [1, 1, 2, 3], { ...base, upsample: 'bilinear' }));
  // centres at 0.25..3.75 of 8 in cell units (x + 0.5) / 4 - 0.5, clamped: weights 0,0,0.125,0.375,0.625,0.875,1,1
  // class 1 = 1 - w, class 2 = 3w: class 2 wins from w > 0.25
  t.same(Array.from(full), [1, 1, 1, 2, 2, 2, 2, 2]);
});

t.test('classes= keeps only the classes asked for; min_area drops the small ones', async (t) => {
  const cls = (x: number, y: number) => (x === 3 && y === 3 ? 2 : x < 2 ? 1 : 0);
  const base = { originalWidth: 4, originalHeight: 4 };
  const all = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], base));
  t.same(all.classes.map((c) => [c.index, c.area]), [[0, 7], [1, 8], [2, 1]]);
  const some = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { ...base, keep: [2, 1] }));
  t.same(some.classes.map((c) => c.index), [1, 2]);
  const big = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { ...base, minArea: 2 }));
  t.same(big.classes.map((c) => c.index), [0, 1]);
  const png = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { ...base, minArea: 2, format: 'png' }));
  const { data } = await sharp(png.png as Uint8Array).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  t.equal(data[15], 255, 'a dropped class is void in the PNG');
  t.equal(data[0], 1);
  t.equal(data[3], 0);
});

t.test('the PNG is a single-channel class map that sharp reads back pixel for pixel (8- and 16-bit)', async (t) => {
  const cls = (x: number, y: number) => (x * 7 + y * 3) % 3;
  const r = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 13, originalHeight: 11, format: 'png' }));
  t.equal(r.classes[0]?.counts, undefined, 'no RLE in the PNG answer');
  const full = classMapOf(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 13, originalHeight: 11 }));
  const meta8 = await sharp(r.png as Uint8Array).metadata();
  t.same([meta8.width, meta8.height, meta8.channels, meta8.depth], [13, 11, 1, 'uchar'], 'one 8-bit channel');
  // b-w: sharp may widen a small greyscale image to sRGB when it writes raw pixels.
  const { data } = await sharp(r.png as Uint8Array).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  t.ok(data.equals(Buffer.from(full)), 'pixels are the class indices');

  // 300 classes: 16-bit, void 65535.
  const many = Float32Array.from({ length: 4 }, (_, i) => [0, 299, 150, 7][i] as number);
  const wide = buildMask(job(many, [1, 2, 2], { layout: 'class-map', classCount: 300, inputWidth: 2, inputHeight: 2, originalWidth: 2, originalHeight: 2, format: 'png' }));
  t.equal(wide.voidValue, 65535);
  const meta = await sharp(wide.png as Uint8Array).metadata();
  t.equal(meta.depth, 'ushort');
  const { data: d16 } = await sharp(wide.png as Uint8Array).toColourspace('grey16').raw({ depth: 'ushort' }).toBuffer({ resolveWithObject: true });
  t.same(Array.from(new Uint16Array(d16.buffer, d16.byteOffset, 4)), [0, 299, 150, 7]);
});

t.test('masks past maxBytes are refused, counted before they are all written', async (t) => {
  // A checkerboard: every pixel a run of its own.
  const cls = (x: number, y: number) => (x + y) % 2;
  t.throws(
    () => buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 64, originalHeight: 64, inputWidth: 4, inputHeight: 4, maxBytes: 100 })),
    MaskTooLargeError,
  );
  const fine = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 64, originalHeight: 64, maxBytes: 10_000 }));
  t.equal(fine.classes.length, 2);
});

t.test('the mask threads build masks off the main thread, and answer RESPONSE_TOO_LARGE past the limit', async (t) => {
  const pool = new MaskPool({ threads: 1 });
  t.teardown(() => pool.close());
  const cls = (x: number, y: number) => (x + y) % 3;
  const want = buildMask(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 30, originalHeight: 20 }));
  const got = await pool.build(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 30, originalHeight: 20 }));
  t.same(got, want);
  t.equal(pool.started, 1);
  const err = await pool.build(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 30, originalHeight: 20, maxBytes: 5 })).catch((e: unknown) => e);
  t.ok(err instanceof OcularError && err.code === 'RESPONSE_TOO_LARGE', 'RESPONSE_TOO_LARGE');
  const png = await pool.build(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 30, originalHeight: 20, format: 'png' }));
  t.ok(Buffer.isBuffer(png.png), 'the PNG comes back as a Buffer');
  const aborted = new AbortController();
  aborted.abort();
  const dropped = await pool.build(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 3, originalHeight: 2 }), aborted.signal).catch((e: unknown) => e);
  t.ok(dropped instanceof OcularError && dropped.code === 'CLIENT_CLOSED_REQUEST', 'a job whose client left is dropped');
  await pool.close();
  const closed = await pool.build(job(logitsNhwc(4, 4, 3, cls), [1, 4, 4, 3], { originalWidth: 3, originalHeight: 2 })).catch((e: unknown) => e);
  t.ok(closed instanceof OcularError && closed.code === 'DRAINING', 'a closed pool refuses');
});
