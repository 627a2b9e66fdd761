import { deflateSync } from 'node:zlib';

/**
 * A single-channel PNG (colour type 0, greyscale) of a class map: 8-bit from a Uint8Array, 16-bit (big-endian,
 * as PNG stores it) from a Uint16Array. Every row uses filter 0 (none): a class map is long runs of one value,
 * which deflate compresses well as is. Runs in the mask threads (deflateSync blocks only them).
 */

const SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes: Uint8Array, crc = 0xffffffff): number {
  let c = crc;
  for (let i = 0; i < bytes.length; i++) c = (CRC_TABLE[(c ^ (bytes[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return c;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  const crc = crc32(out.subarray(4, 8 + data.length)) ^ 0xffffffff;
  out.writeUInt32BE(crc >>> 0, 8 + data.length);
  return out;
}

export function encodePng(map: Uint8Array | Uint16Array, width: number, height: number): Uint8Array {
  const sixteen = map instanceof Uint16Array;
  const bytesPerPixel = sixteen ? 2 : 1;
  const stride = width * bytesPerPixel + 1;
  const raw = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const at = y * stride + 1; // raw[y * stride] = 0: filter none
    const row = y * width;
    if (sixteen) {
      for (let x = 0; x < width; x++) raw.writeUInt16BE(map[row + x] as number, at + 2 * x);
    } else {
      raw.set(map.subarray(row, row + width), at);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = sixteen ? 16 : 8; // bit depth
  ihdr[9] = 0; // greyscale
  ihdr[10] = 0; // deflate
  ihdr[11] = 0; // adaptive filtering (every row: none)
  ihdr[12] = 0; // no interlace
  return Buffer.concat([SIGNATURE, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', new Uint8Array(0))]);
}
