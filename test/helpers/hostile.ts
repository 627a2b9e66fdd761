/**
 * Hostile and odd inputs, generated (sharp and Buffer edits, from real photos where a photo helps): nothing is
 * downloaded and nothing is stored in the repository. Shared by the hardening tests and scripts/hardening/*.
 */
import { randomBytes } from 'node:crypto';
import { request as httpRequest, type Agent, type IncomingHttpHeaders } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import sharp, { type Sharp } from 'sharp';
import { sharedManifestPath } from './app.js';

// ---------------------------------------------------------------------------------------------------------------
// Byte-level edits
// ---------------------------------------------------------------------------------------------------------------

/** Offsets of PNG chunks: [offset of the length field, type, data length]. */
export function pngChunks(png: Buffer): { at: number; type: string; length: number }[] {
  const out: { at: number; type: string; length: number }[] = [];
  let at = 8;
  while (at + 12 <= png.length) {
    const length = png.readUInt32BE(at);
    const type = png.toString('latin1', at + 4, at + 8);
    out.push({ at, type, length });
    at += 12 + length;
  }
  return out;
}

/** A PNG whose IHDR declares width x height (CRC fixed, so decoders believe it); the pixel data is unchanged. */
export function pngWithDimensions(png: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(png);
  // IHDR is the first chunk: length at 8, type at 12, data at 16 (width, height, ...), CRC after 13 bytes of data.
  out.writeUInt32BE(width, 16);
  out.writeUInt32BE(height, 20);
  out.writeUInt32BE(crc32(out.subarray(12, 29)), 29);
  return out;
}

/** A JPEG whose first SOFn segment declares width x height. */
export function jpegWithDimensions(jpeg: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  let at = 2;
  while (at + 4 < out.length) {
    if (out[at] !== 0xff) throw new Error(`no JPEG marker at ${at}`);
    const marker = out[at + 1] as number;
    const length = out.readUInt16BE(at + 2);
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      out.writeUInt16BE(height, at + 5);
      out.writeUInt16BE(width, at + 7);
      return out;
    }
    at += 2 + length;
  }
  throw new Error('no SOF segment');
}

/** A lossy WebP (simple format, one VP8 chunk) whose frame header declares width x height (14 bits each). */
export function webpWithDimensions(webp: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(webp);
  const at = out.indexOf('VP8 ', 12, 'latin1');
  if (at < 0) throw new Error('not a simple lossy WebP');
  // Chunk header (8), frame tag (3), start code 9d 01 2a (3), then width and height, 14 bits + 2 scale bits, LE.
  const dims = at + 8 + 6;
  out.writeUInt16LE(width & 0x3fff, dims);
  out.writeUInt16LE(height & 0x3fff, dims + 2);
  return out;
}

/** A GIF whose logical screen and first image descriptor declare width x height. */
export function gifWithDimensions(gif: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(gif);
  out.writeUInt16LE(width, 6);
  out.writeUInt16LE(height, 8);
  const descriptor = out.indexOf(0x2c, 13);
  if (descriptor > 0) {
    out.writeUInt16LE(width, descriptor + 5);
    out.writeUInt16LE(height, descriptor + 7);
  }
  return out;
}

/** Deterministic bytes from a seed (xorshift32). */
export function pseudoRandomBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// EXIF orientations
// ---------------------------------------------------------------------------------------------------------------

/**
 * The stored pixels for EXIF orientation o (1-8) such that a viewer applying o shows `upright` (raw RGB). Each
 * orientation's inverse: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 270 (the viewer turns 90 right),
 * 7 transverse, 8 rotate 90. Encoded as JPEG (quality 100, 4:4:4) or, where the pixels must survive exactly, PNG.
 */
export async function storedForOrientation(
  upright: Buffer,
  width: number,
  height: number,
  o: number,
  format: 'jpeg' | 'png' = 'jpeg',
): Promise<Buffer> {
  const raw = { raw: { width, height, channels: 3 as const } };
  const step = async (input: Buffer, w: number, h: number, f: (s: Sharp) => Sharp): Promise<{ data: Buffer; w: number; h: number }> => {
    const { data, info } = await f(sharp(input, { raw: { width: w, height: h, channels: 3 } })).raw().toBuffer({ resolveWithObject: true });
    return { data, w: info.width, h: info.height };
  };
  let img = { data: upright, w: width, h: height };
  switch (o) {
    case 1:
      break;
    case 2:
      img = await step(img.data, img.w, img.h, (s) => s.flop());
      break;
    case 3:
      img = await step(img.data, img.w, img.h, (s) => s.rotate(180));
      break;
    case 4:
      img = await step(img.data, img.w, img.h, (s) => s.flip());
      break;
    case 5:
      img = await step(img.data, img.w, img.h, (s) => s.rotate(90));
      img = await step(img.data, img.w, img.h, (s) => s.flop());
      break;
    case 6:
      img = await step(img.data, img.w, img.h, (s) => s.rotate(270));
      break;
    case 7:
      img = await step(img.data, img.w, img.h, (s) => s.rotate(270));
      img = await step(img.data, img.w, img.h, (s) => s.flop());
      break;
    case 8:
      img = await step(img.data, img.w, img.h, (s) => s.rotate(90));
      break;
    default:
      throw new RangeError(`EXIF orientation ${o}`);
  }
  void raw;
  const stored = sharp(img.data, { raw: { width: img.w, height: img.h, channels: 3 } });
  return (format === 'png' ? stored.png() : stored.jpeg({ quality: 100, chromaSubsampling: '4:4:4' }))
    .withMetadata({ orientation: o })
    .toBuffer();
}

// ---------------------------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------------------------

export interface Expect {
  status: number;
  /** The error code; undefined for 200. */
  code?: string;
}

export interface HostileCase {
  name: string;
  group: string;
  body: Buffer;
  contentType: string;
  expect: Expect;
}

const OK: Expect = { status: 200 };
const E415: Expect = { status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' };
const E422: Expect = { status: 422, code: 'IMAGE_DECODE_FAILED' };
const PIXELS: Expect = { status: 422, code: 'TOO_MANY_PIXELS' };

/** Real photo in three formats, re-encoded from one PNG so truncations are comparable. */
export async function photoFormats(photoPath: string): Promise<{ jpeg: Buffer; png: Buffer; webp: Buffer; gif: Buffer }> {
  const base = sharp(readFileSync(photoPath)).resize({ width: 320, withoutEnlargement: true });
  return {
    jpeg: await base.clone().jpeg({ quality: 85 }).toBuffer(),
    png: await base.clone().png().toBuffer(),
    webp: await base.clone().webp({ quality: 80 }).toBuffer(),
    gif: await base.clone().gif().toBuffer(),
  };
}

/**
 * Raw-body cases for a classification model. `gif`: whether the server accepts GIF. Expected answers are the
 * documented ones (README, Errors).
 */
export async function hostileCorpus(photoPath: string, opts: { gif: boolean }): Promise<HostileCase[]> {
  const { jpeg, png, webp, gif } = await photoFormats(photoPath);
  const cases: HostileCase[] = [];
  const add = (group: string, name: string, body: Buffer, contentType: string, expect: Expect) =>
    cases.push({ group, name, body, contentType, expect });

  // Truncation: a few bytes (the magic number incomplete or alone), the header, and several points in the data.
  add('truncated', 'zero bytes', Buffer.alloc(0), 'image/jpeg', { status: 400, code: 'INVALID_REQUEST' });
  for (const [format, bytes, type] of [
    ['jpeg', jpeg, 'image/jpeg'],
    ['png', png, 'image/png'],
    ['webp', webp, 'image/webp'],
  ] as const) {
    add('truncated', `${format} cut to 2 bytes`, bytes.subarray(0, 2), type, E415);
    for (const fraction of [0.02, 0.25, 0.5, 0.9, 0.99]) {
      const cut = Math.max(20, Math.floor(bytes.length * fraction));
      add('truncated', `${format} cut at ${Math.round(fraction * 100)}% (${cut} of ${bytes.length} bytes)`, bytes.subarray(0, cut), type, E422);
    }
  }

  // Bytes that are not what their label says.
  add('mislabelled', 'random bytes as image/jpeg', pseudoRandomBytes(4096, 7), 'image/jpeg', E415);
  add('mislabelled', 'random bytes after a JPEG magic number', Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), pseudoRandomBytes(4096, 8)]), 'image/jpeg', E422);
  add('mislabelled', 'a PNG labelled image/jpeg', png, 'image/jpeg', OK);
  add('mislabelled', 'a JPEG labelled image/png', jpeg, 'image/png', OK);
  add('mislabelled', 'a WebP labelled application/octet-stream', webp, 'application/octet-stream', OK);
  // The bytes decide, never the header (README, "The API"): curl's --data-binary default and Python's requests.
  add('mislabelled', 'a JPEG labelled text/plain', jpeg, 'text/plain', OK);
  add('mislabelled', 'a JPEG labelled application/json', jpeg, 'application/json', OK);
  add('mislabelled', 'a JPEG labelled application/x-www-form-urlencoded', jpeg, 'application/x-www-form-urlencoded', OK);
  add('mislabelled', 'a JPEG labelled image/svg+xml', jpeg, 'image/svg+xml', OK);
  add('not an image', 'HTML as image/jpeg', Buffer.from('<!doctype html><html><body><script>alert(1)</script></body></html>'), 'image/jpeg', E415);
  add('not an image', 'JSON as image/png', Buffer.from('{"image":"https://example.com/cat.png"}'), 'image/png', E415);
  add('not an image', 'SVG as image/svg+xml', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><image href="file:///etc/passwd"/></svg>'), 'image/svg+xml', E415);
  add('not an image', 'SVG with an XML prolog as image/png', Buffer.from('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg xmlns="http://www.w3.org/2000/svg">&x;</svg>'), 'image/png', E415);
  const tiff = await sharp(png).tiff().toBuffer();
  add('not an image', 'TIFF (not enabled) as image/jpeg', tiff, 'image/jpeg', E415);
  add('not an image', 'PDF as image/jpeg', Buffer.from('%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF'), 'image/jpeg', E415);

  // Decompression bombs: tiny files whose headers declare huge images, refused before any pixel is decoded.
  const tinyPng = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).png().toBuffer();
  const tinyJpeg = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).jpeg().toBuffer();
  const tinyWebp = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).webp().toBuffer();
  const tinyGif = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).gif().toBuffer();
  add('bomb', 'PNG declaring 100000x100000', pngWithDimensions(tinyPng, 100_000, 100_000), 'image/png', PIXELS);
  add('bomb', 'PNG declaring 2^31-1 x 2^31-1', pngWithDimensions(tinyPng, 0x7fffffff, 0x7fffffff), 'image/png', E422);
  add('bomb', 'JPEG declaring 65500x65500', jpegWithDimensions(tinyJpeg, 65_500, 65_500), 'image/jpeg', PIXELS);
  add('bomb', 'WebP declaring 16383x16383', webpWithDimensions(tinyWebp, 16_383, 16_383), 'image/webp', PIXELS);
  add('bomb', 'GIF declaring 65535x65535', gifWithDimensions(tinyGif, 65_535, 65_535), 'image/gif', opts.gif ? PIXELS : E415);
  add('bomb', 'PNG declaring 0x0', pngWithDimensions(tinyPng, 0, 0), 'image/png', E422);

  // Extreme shapes, bit depths, colour models: valid images, answered 200.
  const make = (w: number, h: number, ch: 1 | 2 | 3 | 4 = 3) => sharp({ create: { width: w, height: h, channels: ch as 3, background: { r: 200, g: 100, b: 50, alpha: 0.5 } } });
  add('shape', '1x1 PNG', await make(1, 1).png().toBuffer(), 'image/png', OK);
  add('shape', '10000x1 PNG', await make(10_000, 1).png().toBuffer(), 'image/png', OK);
  add('shape', '1x10000 PNG', await make(1, 10_000).png().toBuffer(), 'image/png', OK);
  add('shape', '10000x1 JPEG', await make(10_000, 1).jpeg().toBuffer(), 'image/jpeg', OK);
  const photo = sharp(png);
  add('colour', '16-bit RGB PNG', await photo.clone().toColourspace('rgb16').png().toBuffer(), 'image/png', OK);
  add('colour', 'palette PNG with transparency', await photo.clone().ensureAlpha(0.5).png({ palette: true, colours: 16 }).toBuffer(), 'image/png', OK);
  add('colour', 'grey PNG', await photo.clone().greyscale().png().toBuffer(), 'image/png', OK);
  add('colour', 'grey + alpha PNG', await photo.clone().greyscale().ensureAlpha(0.7).png().toBuffer(), 'image/png', OK);
  add('colour', '16-bit grey PNG', await photo.clone().greyscale().toColourspace('grey16').png().toBuffer(), 'image/png', OK);
  add('colour', 'CMYK JPEG', await photo.clone().toColourspace('cmyk').jpeg().toBuffer(), 'image/jpeg', OK);
  add('colour', 'RGBA WebP', await photo.clone().ensureAlpha(0.5).webp().toBuffer(), 'image/webp', OK);
  add('colour', 'progressive JPEG', await photo.clone().jpeg({ progressive: true }).toBuffer(), 'image/jpeg', OK);
  const frameA = await make(64, 48).png().toBuffer();
  const frameB = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#0040ff' } }).png().toBuffer();
  const animated = await sharp([frameA, frameB], { join: { animated: true } }).gif().toBuffer();
  add('colour', 'animated GIF (first frame)', animated, 'image/gif', opts.gif ? OK : E415);
  add('colour', 'still GIF', gif, 'image/gif', opts.gif ? OK : E415);
  return cases;
}

// ---------------------------------------------------------------------------------------------------------------
// Multipart
// ---------------------------------------------------------------------------------------------------------------

export interface Part {
  name: string;
  filename?: string;
  contentType?: string;
  body: Buffer;
}

export function multipartBody(parts: Part[]): { body: Buffer; contentType: string } {
  const boundary = `----ocular${randomBytes(8).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition = `form-data; name="${p.name}"${p.filename !== undefined ? `; filename="${p.filename}"` : ''}`;
    const head = `--${boundary}\r\nContent-Disposition: ${disposition}\r\n${p.contentType !== undefined ? `Content-Type: ${p.contentType}\r\n` : ''}\r\n`;
    chunks.push(Buffer.from(head), p.body, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

// ---------------------------------------------------------------------------------------------------------------
// Manifests and HTTP
// ---------------------------------------------------------------------------------------------------------------

/**
 * A copy of the shared manifest with absolute paths, keeping only `names` (in that order), each edited by `edit`.
 * Returns its path.
 */
export function writeManifest(
  dir: string,
  names: string[],
  edit: (model: Record<string, unknown>) => Record<string, unknown> = (m) => m,
): string {
  const base = JSON.parse(readFileSync(sharedManifestPath, 'utf8')) as { models: Record<string, unknown>[] };
  // resolve, not join: the copy written for an OCULAR_SHARED_DIR elsewhere (helpers/app.ts) holds absolute paths,
  // which join would append to the manifest's folder.
  const abs = (p: unknown): string => resolve(dirname(sharedManifestPath), String(p));
  const absStage = (s: unknown): unknown => {
    if (typeof s !== 'object' || s === null) return s;
    const o = s as Record<string, unknown>;
    return {
      ...o,
      ...(o['source'] !== undefined ? { source: abs(o['source']) } : {}),
      ...(o['labels'] !== undefined ? { labels: abs(o['labels']) } : {}),
    };
  };
  const models = names.map((name) => {
    const m = base.models.find((x) => x['name'] === name);
    if (m === undefined) throw new Error(`${name} is not in the shared manifest`);
    const fixed = absStage(m) as Record<string, unknown>;
    if (fixed['detector'] !== undefined) fixed['detector'] = absStage(fixed['detector']);
    if (fixed['recognizer'] !== undefined) fixed['recognizer'] = absStage(fixed['recognizer']);
    return edit(fixed);
  });
  const path = join(dir, `manifest-${randomBytes(4).toString('hex')}.json`);
  writeFileSync(path, JSON.stringify({ models }));
  return path;
}

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  ms: number;
}

/** One HTTP request to 127.0.0.1; rejects on any transport error (refused, reset, truncated answer). */
export function send(
  port: number,
  opts: { method?: string; path: string; body?: Buffer; headers?: Record<string, string>; agent?: Agent | false; timeoutMs?: number },
): Promise<HttpAnswer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: opts.method ?? (opts.body !== undefined ? 'POST' : 'GET'),
        path: opts.path,
        headers: { ...opts.headers, ...(opts.body !== undefined ? { 'content-length': String(opts.body.length) } : {}) },
        agent: opts.agent ?? false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          if (!res.complete) reject(new Error('answer truncated'));
          else resolve({ status: res.statusCode ?? 0, headers: res.headers, body, ms: performance.now() - started });
        });
        res.on('error', reject);
      },
    );
    if (opts.timeoutMs !== undefined) req.setTimeout(opts.timeoutMs, () => req.destroy(new Error(`no answer within ${opts.timeoutMs} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Lines of text that must never appear in an answer: stack frames, file paths, library names and versions. */
export const LEAK_PATTERNS: RegExp[] = [
  /\bat [\w.<>]+ \(/, // a stack frame
  /\/(?:work|home|usr|opt|app|tmp|src)\//,
  /node_modules/,
  /\.(?:ts|js|mjs|cjs):\d+/,
  /\b(?:sharp|libvips|vips|onnxruntime|fastify|node)[ @/]v?\d+\.\d+/i,
];

export function leaks(text: string): string[] {
  return LEAK_PATTERNS.filter((re) => re.test(text)).map(String);
}
