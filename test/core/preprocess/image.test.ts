import { existsSync, readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import t from 'tap';
import type { Test } from 'tap';
import { InputSpecSchema } from '../../../src/config/input-spec.js';
import type { InputSpec } from '../../../src/config/input-spec.js';
import { OcularError } from '../../../src/errors.js';
import { DEFAULT_IMAGE_FORMATS, IMAGE_FORMATS, type ImageFormat } from '../../../src/config/image-formats.js';
import { cropRgbInPlace, decodeImage, prepareFromDecoded, prepareImage } from '../../../src/core/preprocess/image.js';
import type { DecodeLimits } from '../../../src/core/preprocess/image.js';
import { limitRound32Size, pythonRound } from '../../../src/core/preprocess/resize-plan.js';
import { configureSharp } from '../../../src/core/preprocess/sharp-config.js';
import { sniffFormat } from '../../../src/core/preprocess/sniff-format.js';
import { normalizeInto, normalizeParamsOf } from '../../../src/core/runner/normalize.js';
import { inputSpecs } from '../../fixtures/input-specs.js';
import { imagePath, maxAbsDiff, modelPath, readTensorProto, sharedTestOptions } from '../../helpers/shared.js';
import { storedPixels } from '../../helpers/exif.js';

configureSharp(DEFAULT_IMAGE_FORMATS);

const limits: DecodeLimits = { maxInputPixels: 40_000_000, allowedFormats: new Set(DEFAULT_IMAGE_FORMATS) };
const allFormats: DecodeLimits = { maxInputPixels: 40_000_000, allowedFormats: new Set(IMAGE_FORMATS) };

function spec(partial: Record<string, unknown>): InputSpec {
  return InputSpecSchema.parse(partial);
}

type Rgb = readonly [number, number, number];

/** An RGB image from a per-pixel function, as raw bytes. */
function paint(width: number, height: number, colour: (x: number, y: number) => Rgb): Buffer {
  const out = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) out.set(colour(x, y), (y * width + x) * 3);
  }
  return out;
}

function png(raw: Buffer, width: number, height: number, channels: 1 | 2 | 3 | 4 = 3): Promise<Buffer> {
  return sharp(raw, { raw: { width, height, channels } }).png().toBuffer();
}

function flat(width: number, height: number, colour: Rgb): Promise<Buffer> {
  return png(paint(width, height, () => colour), width, height);
}

function pixelAt(p: { pixels: Uint8Array; width: number }, x: number, y: number): Rgb {
  const i = (y * p.width + x) * 3;
  return [p.pixels[i] as number, p.pixels[i + 1] as number, p.pixels[i + 2] as number];
}

async function rejectsWith(t: Test, promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  try {
    await promise;
    t.fail(`expected ${code}, it resolved`);
  } catch (err) {
    t.ok(err instanceof OcularError, 'an OcularError');
    t.equal((err as OcularError).code, code);
    if (message) t.match((err as OcularError).message, message);
  }
}

// ---------------------------------------------------------------------------------------------------------------
t.test('sniffFormat recognises each magic number and nothing else', async (t) => {
  const base = sharp({ create: { width: 4, height: 4, channels: 3, background: '#336699' } });
  const made: Record<ImageFormat, Buffer> = {
    jpeg: await base.clone().jpeg().toBuffer(),
    png: await base.clone().png().toBuffer(),
    webp: await base.clone().webp().toBuffer(),
    gif: await base.clone().gif().toBuffer(),
    tiff: await base.clone().tiff().toBuffer(),
    avif: await base.clone().avif().toBuffer(),
  };
  for (const [format, bytes] of Object.entries(made)) t.equal(sniffFormat(bytes), format, format);

  t.equal(sniffFormat(Buffer.from('GIF87a\x01\x00\x01\x00', 'latin1')), 'gif', 'GIF87a');
  t.equal(sniffFormat(Buffer.from([0x4d, 0x4d, 0x00, 0x2a, 0, 0, 0, 8])), 'tiff', 'big-endian TIFF');
  const avisBox = Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from('ftypmif1\0\0\0\0mif1avis', 'latin1')]);
  t.equal(sniffFormat(avisBox), 'avif', 'avis as a compatible brand');
  const heicBox = Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from('ftypheic\0\0\0\0mif1heic', 'latin1')]);
  t.equal(sniffFormat(heicBox), undefined, 'HEIC without an AVIF brand');

  const notImages: Record<string, Uint8Array> = {
    svg: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'),
    'svg with xml prolog': Buffer.from('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'),
    html: Buffer.from('<!doctype html><html><body>hi</body></html>'),
    json: Buffer.from('{"image":"data"}'),
    empty: new Uint8Array(0),
    'two bytes of JPEG': new Uint8Array([0xff, 0xd8]),
    'RIFF but WAVE': Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1'),
    random: Uint8Array.from({ length: 64 }, (_, i) => (i * 73 + 41) % 251),
  };
  for (const [name, bytes] of Object.entries(notImages)) t.equal(sniffFormat(bytes), undefined, name);
});

// ---------------------------------------------------------------------------------------------------------------
t.test('pythonRound rounds halves to even like Python 3', async (t) => {
  const cases: [number, number][] = [
    [0.5, 0], [1.5, 2], [2.5, 2], [3.5, 4], [22.5, 22], [23.5, 24],
    [2.4, 2], [2.6, 3], [-1.5, -2], [-2.5, -2], [-2.6, -3], [7, 7],
  ];
  for (const [x, expected] of cases) t.equal(pythonRound(x), expected, `round(${x})`);
  t.ok(Object.is(pythonRound(-0.5) + 0, 0), 'round(-0.5) is 0');
});

t.test('limitRound32Size follows PaddleOCR DetResizeForTest', async (t) => {
  t.same(limitRound32Size(1280, 960, 960, 'max'), { width: 960, height: 704 }, '720/32 = 22.5 rounds to 22');
  t.same(limitRound32Size(800, 600, 960, 'max'), { width: 800, height: 608 }, 'no scaling under the limit');
  t.same(limitRound32Size(640, 480, 960, 'max'), { width: 640, height: 480 });
  t.same(limitRound32Size(960, 1280, 960, 'max'), { width: 704, height: 960 }, 'portrait');
  t.same(limitRound32Size(10, 10, 960, 'max'), { width: 32, height: 32 }, 'at least 32');
  t.same(limitRound32Size(2000, 20, 960, 'max'), { width: 960, height: 32 }, '9.6 px high becomes 32');
  t.same(limitRound32Size(1000, 751, 960, 'max'), { width: 960, height: 704 }, 'int() before round: 720.96 -> 720');
  t.same(limitRound32Size(100, 50, 736, 'min'), { width: 1472, height: 736 }, 'min: short side up to the limit');
  t.same(limitRound32Size(1000, 800, 736, 'min'), { width: 992, height: 800 }, 'min: no scaling above the limit');
});

// ---------------------------------------------------------------------------------------------------------------
const RED: Rgb = [255, 0, 0];
const BLUE: Rgb = [0, 0, 255];
const GREEN: Rgb = [10, 200, 30];

t.test('stretch resizes the whole image to exactly width x height', async (t) => {
  const bytes = await png(paint(100, 50, (x) => (x < 50 ? RED : BLUE)), 100, 50);
  const out = await prepareImage(bytes, spec({ width: 20, height: 40, resize: { mode: 'stretch' } }), limits);
  t.equal(out.width, 20);
  t.equal(out.height, 40);
  t.equal(out.pixels.length, 20 * 40 * 3);
  t.same(out.transform, { originalWidth: 100, originalHeight: 50, scaleX: 0.2, scaleY: 0.8, offsetX: 0, offsetY: 0 });
  for (const y of [0, 20, 39]) {
    t.same(pixelAt(out, 0, y), RED);
    t.same(pixelAt(out, 8, y), RED);
    t.same(pixelAt(out, 11, y), BLUE);
    t.same(pixelAt(out, 19, y), BLUE);
  }
});

/** Every pixel is `colour` inside [left, left+w) x [top, top+h) and `pad` grey outside. */
function checkLetterbox(
  t: Test,
  out: { pixels: Uint8Array; width: number; height: number },
  box: { left: number; top: number; width: number; height: number },
  colour: Rgb,
  pad: number,
): void {
  let wrong = 0;
  for (let y = 0; y < out.height; y++) {
    for (let x = 0; x < out.width; x++) {
      const inside = x >= box.left && x < box.left + box.width && y >= box.top && y < box.top + box.height;
      const want = inside ? colour : ([pad, pad, pad] as const);
      const got = pixelAt(out, x, y);
      if (got.some((v, c) => v !== want[c])) wrong++;
    }
  }
  t.equal(wrong, 0, `pixels outside the expected layout (box ${JSON.stringify(box)})`);
}

t.test('letterbox scales by min(W/w, H/h), floors the size and pads at the top-left', async (t) => {
  const bytes = await flat(100, 50, GREEN);
  const s = spec({ width: 64, height: 48, resize: { mode: 'letterbox', anchor: 'top-left', padValue: 114 } });
  const out = await prepareImage(bytes, s, limits);
  t.equal(out.width, 64);
  t.equal(out.height, 48);
  // r = min(0.64, 0.96) = 0.64 -> 64 x 32.
  checkLetterbox(t, out, { left: 0, top: 0, width: 64, height: 32 }, GREEN, 114);
  t.same(out.transform, { originalWidth: 100, originalHeight: 50, scaleX: 0.64, scaleY: 0.64, offsetX: 0, offsetY: 0 });
});

t.test('letterbox centred puts the image at floor((W - nw) / 2), floor((H - nh) / 2)', async (t) => {
  const landscape = await prepareImage(
    await flat(100, 50, GREEN),
    spec({ width: 64, height: 49, resize: { mode: 'letterbox', anchor: 'center', padValue: 0 } }),
    limits,
  );
  // r = min(0.64, 0.98) = 0.64 -> 64 x 32, top = floor(17 / 2) = 8.
  checkLetterbox(t, landscape, { left: 0, top: 8, width: 64, height: 32 }, GREEN, 0);
  t.equal(landscape.transform.offsetY, 8);
  t.equal(landscape.transform.offsetX, 0);

  const portrait = await prepareImage(
    await flat(30, 80, RED),
    spec({ width: 64, height: 48, resize: { mode: 'letterbox', anchor: 'center', padValue: 114 } }),
    limits,
  );
  // r = min(64/30, 0.6) = 0.6 -> 18 x 48, left = floor(46 / 2) = 23.
  checkLetterbox(t, portrait, { left: 23, top: 0, width: 18, height: 48 }, RED, 114);
  t.same(portrait.transform, { originalWidth: 30, originalHeight: 80, scaleX: 0.6, scaleY: 0.6, offsetX: 23, offsetY: 0 });

  const upscaled = await prepareImage(
    await flat(40, 20, BLUE),
    spec({ width: 64, height: 64, resize: { mode: 'letterbox', padValue: 7 } }),
    limits,
  );
  // r = 1.6 -> 64 x 32, top = 16.
  checkLetterbox(t, upscaled, { left: 0, top: 16, width: 64, height: 32 }, BLUE, 7);
});

t.test('letterbox pads with padValue even when the source has alpha', async (t) => {
  const rgba = await sharp({ create: { width: 60, height: 30, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } })
    .png()
    .toBuffer();
  const out = await prepareImage(
    rgba,
    spec({ width: 32, height: 32, background: '#204060', resize: { mode: 'letterbox', anchor: 'center', padValue: 114 } }),
    limits,
  );
  // Transparent pixels become the background colour; the padding stays grey.
  checkLetterbox(t, out, { left: 0, top: 8, width: 32, height: 16 }, [0x20, 0x40, 0x60], 114);
});

t.test('shorter-side-center-crop crops the centre at floor((rw - W) / 2), floor((rh - H) / 2)', async (t) => {
  // A gradient that names each pixel: R = x, G = y. Shorter side already equal to shorterSide: no resampling.
  const gradient = (x: number, y: number): Rgb => [x, y, 7];
  for (const [w, h] of [[100, 50], [101, 51], [51, 101]] as const) {
    const bytes = await png(paint(w, h, gradient), w, h);
    const side = Math.min(w, h);
    const out = await prepareImage(
      bytes,
      spec({ width: 40, height: 40, resize: { mode: 'shorter-side-center-crop', shorterSide: side } }),
      limits,
    );
    const left = Math.floor((w - 40) / 2);
    const top = Math.floor((h - 40) / 2);
    t.equal(out.width, 40);
    t.equal(out.height, 40);
    t.same(pixelAt(out, 0, 0), [left, top, 7], `${w}x${h}: top-left of the crop`);
    t.same(pixelAt(out, 39, 39), [left + 39, top + 39, 7], `${w}x${h}: bottom-right of the crop`);
    t.same(out.transform, { originalWidth: w, originalHeight: h, scaleX: 1, scaleY: 1, offsetX: -left, offsetY: -top });
  }
});

t.test('shorter-side-center-crop scales the shorter side and keeps the aspect ratio', async (t) => {
  const bytes = await png(paint(200, 100, (x) => (x < 100 ? RED : BLUE)), 200, 100);
  const out = await prepareImage(
    bytes,
    spec({ width: 40, height: 40, resize: { mode: 'shorter-side-center-crop', shorterSide: 50 } }),
    limits,
  );
  // 200x100 -> 100x50, crop left = 30, top = 5; the red/blue edge is at resized x = 50, crop x = 20.
  t.same(out.transform, { originalWidth: 200, originalHeight: 100, scaleX: 0.5, scaleY: 0.5, offsetX: -30, offsetY: -5 });
  t.same(pixelAt(out, 18, 20), RED);
  t.same(pixelAt(out, 21, 20), BLUE);

  // 451x300 -> 385x256 as sharp rounds it (384.85), crop offsets 80, 16.
  const cat = await prepareImage(
    await flat(451, 300, GREEN),
    spec({ width: 224, height: 224, resize: { mode: 'shorter-side-center-crop', shorterSide: 256 } }),
    limits,
  );
  t.equal(cat.transform.offsetX, -80);
  t.equal(cat.transform.offsetY, -16);
  t.equal(cat.transform.scaleX, 385 / 451);
  t.equal(cat.transform.scaleY, 256 / 300);
});

t.test('limit-round32 stretches to the PaddleOCR size', async (t) => {
  const bytes = await flat(1280, 960, GREEN);
  const out = await prepareImage(bytes, spec({ width: 640, height: 480, resize: { mode: 'limit-round32' } }), limits);
  t.equal(out.width, 960);
  t.equal(out.height, 704);
  t.same(out.transform, { originalWidth: 1280, originalHeight: 960, scaleX: 0.75, scaleY: 704 / 960, offsetX: 0, offsetY: 0 });
  t.same(pixelAt(out, 500, 500), GREEN);
});

// ---------------------------------------------------------------------------------------------------------------
t.test('EXIF orientations 1 to 8 all decode to the upright image', async (t) => {
  // Upright: 40 x 24, four quadrants plus a marker pixel, so every flip and rotation is distinguishable.
  const [W, H] = [40, 24];
  const upright = (x: number, y: number): Rgb => {
    if (x === 3 && y === 2) return [255, 255, 255];
    if (y < H / 2) return x < W / 2 ? RED : GREEN;
    return x < W / 2 ? BLUE : [250, 200, 0];
  };
  // What the stored (unrotated) pixel at (x, y) shows, per the EXIF definition of each orientation value.
  const stored: Record<number, { w: number; h: number; at: (x: number, y: number) => Rgb }> = {
    1: { w: W, h: H, at: (x, y) => upright(x, y) },
    2: { w: W, h: H, at: (x, y) => upright(W - 1 - x, y) },
    3: { w: W, h: H, at: (x, y) => upright(W - 1 - x, H - 1 - y) },
    4: { w: W, h: H, at: (x, y) => upright(x, H - 1 - y) },
    5: { w: H, h: W, at: (x, y) => upright(y, x) },
    6: { w: H, h: W, at: (x, y) => upright(W - 1 - y, x) },
    7: { w: H, h: W, at: (x, y) => upright(W - 1 - y, H - 1 - x) },
    8: { w: H, h: W, at: (x, y) => upright(y, H - 1 - x) },
  };
  const expected = paint(W, H, upright);
  const s = spec({ width: W, height: H, resize: { mode: 'stretch' }, kernel: 'nearest' });
  for (let orientation = 1; orientation <= 8; orientation++) {
    const o = stored[orientation];
    if (o === undefined) throw new Error('unreachable');
    const bytes = await sharp(paint(o.w, o.h, o.at), { raw: { width: o.w, height: o.h, channels: 3 } })
      .withMetadata({ orientation })
      .png()
      .toBuffer();
    t.equal((await sharp(bytes).metadata()).orientation, orientation, `orientation ${orientation} is in the file`);
    const out = await prepareImage(bytes, s, limits);
    t.equal(out.transform.originalWidth, W, `orientation ${orientation}: upright width`);
    t.equal(out.transform.originalHeight, H, `orientation ${orientation}: upright height`);
    t.ok(Buffer.from(out.pixels).equals(expected), `orientation ${orientation}: upright pixels`);
    const decoded = await decodeImage(bytes, limits);
    t.same([decoded.width, decoded.height], [W, H]);
    t.ok(decoded.pixels.equals(expected), `orientation ${orientation}: decodeImage is upright`);
  }
});

/**
 * Orientations 2-8 are oriented before they are resized, so a photo stored rotated or mirrored gives the tensor of
 * its upright copy. Measured on robin.jpg (380x254, lossless PNG re-encodes; its top-1 flipped when libvips resized
 * before rotating): max |diff| 0 for every orientation and both specs. Resizing first had given up to 141 levels
 * (mean 5.4) for the crop and 153 (mean 2.7) for the letterbox; orientation 5 was already within 1.
 */
const EXIF_TOLERANCE = 0;

t.test('a photo in EXIF orientations 2-8 prepares to the upright copy\'s pixels', sharedTestOptions('images/robin.jpg'), async (t) => {
  const { data, info } = await sharp(readFileSync(imagePath('robin.jpg'))).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const [W, H] = [info.width, info.height];
  const upright = await png(data, W, H);
  for (const [name, s] of [
    ['shorter-side-center-crop (mobilenetv2)', inputSpecs['mobilenetv2-12-int8']],
    ['letterbox (yolox-nano)', inputSpecs['yolox-nano']],
  ] as const) {
    const want = await prepareImage(upright, s, limits);
    for (let o = 2; o <= 8; o++) {
      const stored = storedPixels(data, W, H, o);
      const bytes = await sharp(stored.pixels, { raw: { width: stored.width, height: stored.height, channels: 3 } })
        .withMetadata({ orientation: o })
        .png()
        .toBuffer();
      t.equal((await sharp(bytes).metadata()).orientation, o, `${name}: orientation ${o} is in the file`);
      const got = await prepareImage(bytes, s, limits);
      t.same(got.transform, want.transform, `${name}, orientation ${o}: the upright transform`);
      const diff = maxAbsDiff(got.pixels, want.pixels);
      t.comment(`${name}, orientation ${o}: max |diff| ${diff}`);
      t.ok(diff <= EXIF_TOLERANCE, `${name}, orientation ${o}: max |diff| ${diff} <= ${EXIF_TOLERANCE}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------------------------
/** A real small PNG whose IHDR claims width x height (CRC fixed), so only the header is believable. */
async function pngClaiming(width: number, height: number): Promise<Buffer> {
  const bytes = Buffer.from(await flat(16, 16, GREEN));
  // Signature (8), IHDR length (4), 'IHDR' (4), width (4), height (4), ... 13 data bytes, then CRC of type + data.
  bytes.writeUInt32BE(width, 16);
  bytes.writeUInt32BE(height, 20);
  bytes.writeUInt32BE(crc32(bytes.subarray(12, 29)), 29);
  return bytes;
}

t.test('the pixel limit is enforced from the header, before decoding', async (t) => {
  const bomb = await pngClaiming(5000, 5000);
  const meta = await sharp(bomb).metadata();
  t.same([meta.width, meta.height], [5000, 5000], 'the header is valid');
  const small = { ...limits, maxInputPixels: 1_000_000 };
  const s = spec({ width: 32, height: 32 });
  await rejectsWith(t, prepareImage(bomb, s, small), 'TOO_MANY_PIXELS', /5000x5000/);
  await rejectsWith(t, decodeImage(bomb, small), 'TOO_MANY_PIXELS');
  // Under a limit that admits it, the same bytes reach the decoder, which finds the pixel data missing.
  await rejectsWith(t, prepareImage(bomb, s, { ...limits, maxInputPixels: 30_000_000 }), 'IMAGE_DECODE_FAILED');
  // Exactly at the limit is allowed.
  const ok = await prepareImage(await flat(100, 100, GREEN), s, { ...limits, maxInputPixels: 10_000 });
  t.equal(ok.width, 32);
  await rejectsWith(t, prepareImage(await flat(100, 100, GREEN), s, { ...limits, maxInputPixels: 9_999 }), 'TOO_MANY_PIXELS');
});

t.test('formats outside the allow-list answer 415', async (t) => {
  const base = sharp({ create: { width: 8, height: 8, channels: 3, background: '#336699' } });
  const s = spec({ width: 8, height: 8 });
  const gif = await base.clone().gif().toBuffer();
  const err = prepareImage(gif, s, limits);
  await rejectsWith(t, err, 'UNSUPPORTED_MEDIA_TYPE', /gif/);
  await err.catch((e: unknown) => t.equal((e as OcularError).status, 415));
  await rejectsWith(t, prepareImage(await base.clone().tiff().toBuffer(), s, limits), 'UNSUPPORTED_MEDIA_TYPE', /tiff/);
  await rejectsWith(t, prepareImage(await base.clone().avif().toBuffer(), s, limits), 'UNSUPPORTED_MEDIA_TYPE', /avif/);
  const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>');
  await rejectsWith(t, prepareImage(svg, s, allFormats), 'UNSUPPORTED_MEDIA_TYPE');
  await rejectsWith(t, prepareImage(Buffer.from('{"not":"an image"}'), s, allFormats), 'UNSUPPORTED_MEDIA_TYPE');
  await rejectsWith(t, decodeImage(gif, limits), 'UNSUPPORTED_MEDIA_TYPE');
});

t.test('configureSharp blocks every libvips loader except the allowed formats', async (t) => {
  const base = sharp({ create: { width: 8, height: 8, channels: 3, background: '#336699' } });
  const s = spec({ width: 8, height: 8 });
  const gif = await base.clone().gif().toBuffer();
  const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>');
  t.teardown(() => configureSharp(DEFAULT_IMAGE_FORMATS));

  configureSharp(['jpeg', 'png', 'webp']);
  await t.rejects(sharp(gif).metadata(), /unsupported image format/, 'the GIF loader is blocked');
  await t.rejects(sharp(svg).metadata(), /unsupported image format/, 'the SVG loader is blocked');
  // Allowed per request but blocked in libvips: still refused, as 415.
  await rejectsWith(t, prepareImage(gif, s, allFormats), 'UNSUPPORTED_MEDIA_TYPE');

  configureSharp(IMAGE_FORMATS);
  for (const format of ['gif', 'tiff', 'avif'] as const) {
    const bytes = await base.clone().toFormat(format).toBuffer();
    const out = await prepareImage(bytes, s, allFormats);
    t.equal(out.pixels.length, 8 * 8 * 3, `${format} decodes once allowed`);
  }
  await t.rejects(sharp(svg).metadata(), /unsupported image format/, 'SVG stays blocked with every format allowed');
});

t.test('undecodable input answers 422, never a raw sharp error', async (t) => {
  const s = spec({ width: 32, height: 32 });
  const jpeg = await sharp({ create: { width: 300, height: 200, channels: 3, background: '#808080' } })
    .composite([{ input: paint(100, 100, (x, y) => [x * 2, y * 2, (x + y) % 256]), raw: { width: 100, height: 100, channels: 3 } }])
    .jpeg()
    .toBuffer();
  for (const keep of [0.3, 0.6, 0.95]) {
    const truncated = jpeg.subarray(0, Math.floor(jpeg.length * keep));
    await rejectsWith(t, prepareImage(truncated, s, limits), 'IMAGE_DECODE_FAILED');
    await rejectsWith(t, decodeImage(truncated, limits), 'IMAGE_DECODE_FAILED');
  }
  const pngBytes = await flat(64, 64, GREEN);
  await rejectsWith(t, prepareImage(pngBytes.subarray(0, 60), s, limits), 'IMAGE_DECODE_FAILED');
  const garbage = Buffer.concat([pngBytes.subarray(0, 8), Buffer.alloc(200, 0x55)]);
  await rejectsWith(t, prepareImage(garbage, s, limits), 'IMAGE_DECODE_FAILED');
  const err = await prepareImage(jpeg.subarray(0, 1000), s, limits).catch((e: unknown) => e);
  t.equal((err as OcularError).status, 422);
});

// ---------------------------------------------------------------------------------------------------------------
t.test('grey, grey+alpha, CMYK, 16-bit, palette and RGBA inputs all become 3-channel 8-bit RGB', async (t) => {
  const s = spec({ width: 16, height: 8, kernel: 'nearest', background: '#000000' });
  const colour = sharp({ create: { width: 16, height: 8, channels: 3, background: '#c86432' } });
  // CMYK's gamut is smaller than sRGB's: a muted colour survives the round trip through libvips' built-in CMYK
  // profile, within a few levels (the profile's rendering is not an exact inverse); inverted or raw-as-RGB CMYK
  // would be off by far more.
  const muted = sharp({ create: { width: 16, height: 8, channels: 3, background: '#968c78' } });
  const halfAlpha = sharp({ create: { width: 16, height: 8, channels: 4, background: { r: 200, g: 100, b: 50, alpha: 0.5 } } });
  const inputs: { name: string; bytes: Buffer; want: Rgb; tolerance: number }[] = [
    { name: 'grey', bytes: await png(Buffer.alloc(16 * 8, 128), 16, 8, 1), want: [128, 128, 128], tolerance: 0 },
    {
      name: 'grey+alpha on black',
      bytes: await png(Buffer.from(Array.from({ length: 16 * 8 }, () => [200, 128]).flat()), 16, 8, 2),
      want: [100, 100, 100],
      tolerance: 1,
    },
    {
      name: 'CMYK JPEG',
      bytes: await muted.clone().toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer(),
      want: [0x96, 0x8c, 0x78],
      tolerance: 16,
    },
    { name: '16-bit PNG', bytes: await colour.clone().toColourspace('rgb16').png().toBuffer(), want: [200, 100, 50], tolerance: 0 },
    { name: 'palette PNG', bytes: await colour.clone().png({ palette: true }).toBuffer(), want: [200, 100, 50], tolerance: 0 },
    { name: 'RGBA on black', bytes: await halfAlpha.clone().png().toBuffer(), want: [100, 50, 25], tolerance: 1 },
  ];
  for (const { name, bytes, want, tolerance } of inputs) {
    const out = await prepareImage(bytes, s, limits);
    t.equal(out.pixels.length, 16 * 8 * 3, `${name}: 3 channels`);
    const got = pixelAt(out, 5, 5);
    t.ok(
      got.every((v, c) => Math.abs(v - (want[c] as number)) <= tolerance),
      `${name}: ${JSON.stringify(got)} is ${JSON.stringify(want)} within ${tolerance}`,
    );
    const decoded = await decodeImage(bytes, limits, '#000000');
    t.equal(decoded.pixels.length, 16 * 8 * 3, `${name}: decodeImage gives 3 channels`);
  }
  const meta16 = await sharp(inputs[3]?.bytes).metadata();
  t.equal(meta16.depth, 'ushort', 'the 16-bit fixture really is 16-bit');
  const metaCmyk = await sharp(inputs[2]?.bytes).metadata();
  t.equal(metaCmyk.space, 'cmyk', 'the CMYK fixture really is CMYK');
});

t.test('prepareFromDecoded resizes a decoded image like prepareImage', async (t) => {
  const bytes = await png(paint(90, 60, (x, y) => [x * 2, y * 3, (x * y) % 256]), 90, 60);
  const decoded = await decodeImage(bytes, limits);
  for (const s of [
    spec({ width: 50, height: 40, resize: { mode: 'stretch' } }),
    spec({ width: 64, height: 64, resize: { mode: 'letterbox' } }),
    spec({ width: 32, height: 32, resize: { mode: 'shorter-side-center-crop', shorterSide: 40 } }),
    spec({ width: 64, height: 64, resize: { mode: 'limit-round32', limitSideLen: 64 } }),
  ]) {
    const direct = await prepareImage(bytes, s, limits);
    const fromDecoded = await prepareFromDecoded(decoded, s);
    t.same(fromDecoded.transform, direct.transform, `${s.resize.mode}: same transform`);
    t.equal(maxAbsDiff(fromDecoded.pixels, direct.pixels), 0, `${s.resize.mode}: same pixels`);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// End to end: the README's preprocessing of a real photo equals the model's reference input tensor, to within one
// 8-bit level after normalisation.

interface ReferenceCase {
  model: keyof typeof inputSpecs;
  image: string;
}

const references: ReferenceCase[] = [
  { model: 'mobilenetv2-12-int8', image: 'cat_chelsea.png' },
  { model: 'yolox-nano', image: 'street_notice_sign.jpg' },
  { model: 'ultraface-rfb-320', image: 'person_astronaut.png' },
  { model: 'deeplabv3-mobilenetv2-voc', image: 'cat_chelsea.png' },
  { model: 'ppocrv4-det', image: 'street_pub_car.jpg' },
];

function oneLevel(s: InputSpec): number {
  return Math.max(...s.std.map((d) => Math.abs(s.scale / d))) + 1e-5;
}

for (const { model, image } of references) {
  const reference = `models/${model}/test_data_set_0/input_0.pb`;
  const photo = `images/${image}`;
  const options = sharedTestOptions(reference);
  // A few photos named in the READMEs are deliberately kept out of ../shared/images (models/README.md).
  if (options.skip === undefined && !existsSync(imagePath(image))) {
    options.skip = `${image} is not in the shared images folder (kept aside for independent checks)`;
  }
  t.test(`${model}: ${image} preprocessed per the README matches the reference tensor`, options, async (t) => {
    const s = inputSpecs[model];
    const ref = readTensorProto(modelPath(model, 'test_data_set_0/input_0.pb'));
    const out = await prepareImage(readFileSync(imagePath(image)), s, limits);
    const [h, w] = s.layout === 'NCHW' ? [ref.dims[2], ref.dims[3]] : [ref.dims[1], ref.dims[2]];
    t.same([out.width, out.height], [w, h], `tensor size of ${photo}`);
    const tensor = new Float32Array(ref.data.length);
    normalizeInto(out.pixels, out.width, out.height, normalizeParamsOf(s), tensor, 0, out.height, out.width);
    const diff = maxAbsDiff(tensor, ref.data);
    t.comment(`${model}: max |diff| ${diff} (one 8-bit level = ${oneLevel(s)})`);
    t.ok(diff <= oneLevel(s), `max |diff| ${diff} within one 8-bit level`);
  });
}

t.test('yolox-nano: the transform maps the original to the letterboxed tensor', sharedTestOptions('images/street_notice_sign.jpg'), async (t) => {
  const out = await prepareImage(readFileSync(imagePath('street_notice_sign.jpg')), inputSpecs['yolox-nano'], limits);
  t.same(out.transform, { originalWidth: 800, originalHeight: 600, scaleX: 0.52, scaleY: 0.52, offsetX: 0, offsetY: 0 });
});

t.test(
  'ppocrv4-det: the spec reproduces the reference tensor from its own pixels (source photo absent)',
  sharedTestOptions('models/ppocrv4-det/test_data_set_0/input_0.pb'),
  async (t) => {
    // street_pub_car.jpg is kept out of ../shared/images, but it is 640x480, which DetResizeForTest keeps as is:
    // the tensor is the photo's pixels, normalised. Undoing the spec's normalisation must give whole 8-bit values
    // (a wrong channel order or mean/std order would not), and those pixels, as a PNG, must go through
    // prepareImage + normalizeInto back to the same tensor.
    const s = inputSpecs['ppocrv4-det'];
    const ref = readTensorProto(modelPath('ppocrv4-det', 'test_data_set_0/input_0.pb'));
    const [h, w] = [ref.dims[2] ?? 0, ref.dims[3] ?? 0];
    t.same(limitRound32Size(w, h, 960, 'max'), { width: w, height: h }, `${w}x${h} is kept as is`);
    const plane = w * h;
    const rgb = Buffer.alloc(plane * 3);
    let worst = 0;
    for (let c = 0; c < 3; c++) {
      const std = s.std[c] as number;
      const a = s.scale / std;
      const b = -(s.mean[c] as number) / std;
      const imageChannel = s.channelOrder === 'BGR' ? 2 - c : c;
      for (let i = 0; i < plane; i++) {
        const p = ((ref.data[c * plane + i] as number) - b) / a;
        worst = Math.max(worst, Math.abs(p - Math.round(p)), p < -0.5 || p > 255.5 ? 1 : 0);
        rgb[i * 3 + imageChannel] = Math.round(p);
      }
    }
    t.ok(worst < 0.01, `largest distance from a whole pixel value: ${worst}`);

    const out = await prepareImage(await png(rgb, w, h), s, limits);
    const tensor = new Float32Array(ref.data.length);
    normalizeInto(out.pixels, out.width, out.height, normalizeParamsOf(s), tensor, 0, out.height, out.width);
    const diff = maxAbsDiff(tensor, ref.data);
    t.comment(`ppocrv4-det (pixels recovered from the tensor): max |diff| ${diff} (one 8-bit level = ${oneLevel(s)})`);
    t.ok(diff <= oneLevel(s), `max |diff| ${diff} within one 8-bit level`);
  },
);

t.test('cropRgbInPlace equals a crop into a fresh buffer, for every offset of small images', async (t) => {
  let checked = 0;
  for (const [srcW, srcH, w, h] of [
    [5, 4, 3, 2],
    [7, 7, 7, 7],
    [9, 3, 2, 3],
    [4, 9, 4, 5],
    [31, 17, 8, 16],
  ] as const) {
    for (let top = 0; top + h <= srcH; top++) {
      for (let left = 0; left + w <= srcW; left++) {
        const src = Buffer.alloc(srcW * srcH * 3);
        for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) % 251;
        const expected = Buffer.alloc(w * h * 3);
        for (let y = 0; y < h; y++) src.copy(expected, y * w * 3, ((top + y) * srcW + left) * 3, ((top + y) * srcW + left + w) * 3);
        const got = cropRgbInPlace(src, srcW, left, top, w, h);
        if (!got.equals(expected)) t.fail(`${srcW}x${srcH} crop ${w}x${h}+${left}+${top}`);
        checked++;
      }
    }
  }
  t.equal(checked, 71, 'every placement of every crop was compared');
  t.throws(() => cropRgbInPlace(Buffer.alloc(4 * 4 * 3), 4, 1, 0, 4, 4), RangeError, 'a crop past the right edge is refused');
  t.throws(() => cropRgbInPlace(Buffer.alloc(4 * 4 * 3), 4, 0, 1, 4, 4), RangeError, 'a crop past the bottom is refused');
});
