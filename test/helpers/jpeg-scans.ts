/**
 * A valid progressive JPEG whose decoding costs as much as you like: sharp writes a progressive JPEG, then `extra`
 * scans are appended by hand, each an AC scan of the first component (coefficients 1-63, no successive
 * approximation) whose coefficients are all zero, coded as end-of-band runs. Decoders accept it and decode the
 * same picture, but each scan is one more pass over every block of the image, which libjpeg makes before any pixel
 * comes out. Shared by the decoding hardening test and scripts/hardening/decoding.ts.
 */
import sharp from 'sharp';

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

/** Appends `extra` all-zero AC scans of the first component before the EOI of a progressive JPEG. */
export function withExtraScans(jpeg: Buffer, extra: number): Buffer {
  let at = 2;
  let frame: { width: number; height: number; id: number; h: number; v: number; hMax: number; vMax: number } | undefined;
  while (at + 4 <= jpeg.length && jpeg[at] === 0xff) {
    const marker = jpeg[at + 1] as number;
    const length = jpeg.readUInt16BE(at + 2);
    if (marker === 0xc2) {
      const components = jpeg[at + 9] as number;
      const sampling = Array.from({ length: components }, (_, c) => jpeg[at + 11 + 3 * c] as number);
      frame = {
        height: jpeg.readUInt16BE(at + 5),
        width: jpeg.readUInt16BE(at + 7),
        id: jpeg[at + 10] as number,
        h: (sampling[0] as number) >> 4,
        v: (sampling[0] as number) & 15,
        hMax: Math.max(...sampling.map((s) => s >> 4)),
        vMax: Math.max(...sampling.map((s) => s & 15)),
      };
    }
    if (marker === 0xda) break;
    at += 2 + length;
  }
  if (frame === undefined) throw new Error('not a progressive JPEG (no SOF2 before the first scan)');
  const blocks =
    Math.ceil(Math.ceil((frame.width * frame.h) / frame.hMax) / 8) * Math.ceil(Math.ceil((frame.height * frame.v) / frame.vMax) / 8);
  // AC table 0 holds the end-of-band runs EOB0..EOB14 (symbols 0x00..0xE0), each a 4-bit code.
  const counts = Buffer.alloc(16);
  counts[3] = 15;
  const dht = Buffer.concat([Buffer.from([0xff, 0xc4]), u16(2 + 1 + 16 + 15), Buffer.from([0x10]), counts, Buffer.from(Array.from({ length: 15 }, (_, n) => n << 4))]);
  const bits: number[] = [];
  const put = (value: number, n: number) => {
    for (let b = n - 1; b >= 0; b--) bits.push((value >> b) & 1);
  };
  for (let left = blocks; left > 0; ) {
    const run = Math.min(left, 32767);
    const n = Math.floor(Math.log2(run));
    put(n, 4); // EOBn: a run of 2^n + the next n bits
    put(run - (1 << n), n);
    left -= run;
  }
  while (bits.length % 8 !== 0) bits.push(1);
  const data: number[] = [];
  for (let b = 0; b < bits.length; b += 8) {
    const byte = bits.slice(b, b + 8).reduce((v, bit) => (v << 1) | bit, 0);
    data.push(byte);
    if (byte === 0xff) data.push(0); // byte stuffing
  }
  const scan = Buffer.concat([Buffer.from([0xff, 0xda]), u16(8), Buffer.from([1, frame.id, 0x00, 1, 63, 0x00]), Buffer.from(data)]);
  const eoi = jpeg.lastIndexOf(Buffer.from([0xff, 0xd9]));
  return Buffer.concat([jpeg.subarray(0, eoi), dht, ...Array.from({ length: extra }, () => scan), jpeg.subarray(eoi)]);
}

/** A grey progressive JPEG of side x side pixels with `extra` costly scans appended. */
export async function manyScanJpeg(side: number, extra: number): Promise<Buffer> {
  const base = await sharp({ create: { width: side, height: side, channels: 3, background: '#808080' } }).jpeg({ progressive: true }).toBuffer();
  return withExtraScans(base, extra);
}
