/**
 * fast-check arbitraries for the predict-route fuzzing (test/hardening/fuzz.test.ts, scripts/hardening/fuzz.ts):
 * mutations of real photos, and valid images generated from scratch.
 */
import fc from 'fast-check';
import sharp from 'sharp';
import { gifWithDimensions, jpegWithDimensions, pngChunks, pngWithDimensions, webpWithDimensions } from './hostile.js';

export type Mutation =
  | { kind: 'truncate'; at: number }
  | { kind: 'bytes'; edits: { at: number; value: number }[] }
  | { kind: 'dimensions'; width: number; height: number }
  | { kind: 'chunk-length'; chunk: number; length: number }
  | { kind: 'splice'; at: number; length: number; seed: number };

export function imageMutation(): fc.Arbitrary<Mutation> {
  const fraction = fc.double({ min: 0, max: 1, noNaN: true });
  const dim = fc.oneof(fc.constantFrom(0, 1, 2, 16383, 65535, 0x7fffffff, 0xffffffff), fc.nat({ max: 100_000 }));
  return fc.oneof(
    fraction.map((f) => ({ kind: 'truncate' as const, at: f })),
    fc.array(fc.record({ at: fraction, value: fc.nat({ max: 255 }) }), { minLength: 1, maxLength: 16 }).map((edits) => ({ kind: 'bytes' as const, edits: edits.map((e) => ({ at: e.at, value: e.value })) })),
    fc.record({ width: dim, height: dim }).map((d) => ({ kind: 'dimensions' as const, ...d })),
    fc.record({ chunk: fc.nat({ max: 16 }), length: fc.oneof(fc.nat({ max: 1 << 20 }), fc.constant(0xffffffff)) }).map((c) => ({ kind: 'chunk-length' as const, ...c })),
    fc.record({ at: fraction, length: fc.nat({ max: 4096 }), seed: fc.nat() }).map((s) => ({ kind: 'splice' as const, ...s })),
  );
}

/** Applies a mutation; header edits use the format's own layout (and fix the PNG CRC, so decoders believe it). */
export function mutate(image: Buffer, m: Mutation): Buffer {
  const pos = (f: number) => Math.min(image.length - 1, Math.floor(f * image.length));
  switch (m.kind) {
    case 'truncate':
      return image.subarray(0, pos(m.at));
    case 'bytes': {
      const out = Buffer.from(image);
      for (const e of m.edits) out[pos(e.at)] = e.value;
      return out;
    }
    case 'dimensions': {
      const w = m.width >>> 0;
      const h = m.height >>> 0;
      try {
        if (image[0] === 0x89) return pngWithDimensions(image, w, h);
        if (image[0] === 0xff) return jpegWithDimensions(image, w & 0xffff, h & 0xffff);
        if (image.toString('latin1', 0, 4) === 'RIFF') return webpWithDimensions(image, w, h);
        if (image.toString('latin1', 0, 3) === 'GIF') return gifWithDimensions(image, w & 0xffff, h & 0xffff);
      } catch {
        return image;
      }
      return image;
    }
    case 'chunk-length': {
      const out = Buffer.from(image);
      if (image[0] === 0x89) {
        const chunks = pngChunks(image);
        const c = chunks[m.chunk % Math.max(1, chunks.length)];
        if (c !== undefined) out.writeUInt32BE(m.length >>> 0, c.at);
      } else if (image[0] === 0xff) {
        // The length of the n-th JPEG segment.
        let at = 2;
        for (let n = 0; at + 4 < out.length && n < m.chunk; n++) at += 2 + out.readUInt16BE(at + 2);
        if (at + 4 < out.length) out.writeUInt16BE(m.length & 0xffff, at + 2);
      } else if (image.toString('latin1', 0, 4) === 'RIFF') {
        // The RIFF size, or the first chunk's size.
        out.writeUInt32LE(m.length >>> 0, m.chunk % 2 === 0 ? 4 : 16);
      }
      return out;
    }
    case 'splice': {
      const at = pos(m.at);
      const noise = Buffer.alloc(m.length);
      let x = m.seed | 1;
      for (let i = 0; i < noise.length; i++) {
        x = (x * 1103515245 + 12345) >>> 0;
        noise[i] = x >>> 24;
      }
      return Buffer.concat([image.subarray(0, at), noise, image.subarray(at)]);
    }
  }
}

export interface ValidImage {
  describe: string;
  encode(): Promise<Buffer>;
}

/** A valid image: any size from 1x1 to 1200 on a side, 1-4 channels, noise or flat, JPEG, PNG or WebP. */
export function validImage(): fc.Arbitrary<ValidImage> {
  return fc
    .record({
      width: fc.integer({ min: 1, max: 1200 }),
      height: fc.integer({ min: 1, max: 1200 }),
      channels: fc.constantFrom(1, 2, 3, 4),
      format: fc.constantFrom('jpeg', 'png', 'webp'),
      noise: fc.boolean(),
      seed: fc.nat(),
    })
    .map((s) => ({
      describe: `${s.width}x${s.height}x${s.channels} ${s.format}${s.noise ? ' noise' : ''}`,
      async encode() {
        const size = s.width * s.height * s.channels;
        const raw = Buffer.alloc(size, 127);
        if (s.noise) {
          let x = s.seed | 1;
          for (let i = 0; i < size; i++) {
            x = (x * 1103515245 + 12345) >>> 0;
            raw[i] = x >>> 24;
          }
        }
        const img = sharp(raw, { raw: { width: s.width, height: s.height, channels: s.channels as 1 | 2 | 3 | 4 } });
        return s.format === 'jpeg' ? img.jpeg().toBuffer() : s.format === 'png' ? img.png().toBuffer() : img.webp().toBuffer();
      },
    }));
}
