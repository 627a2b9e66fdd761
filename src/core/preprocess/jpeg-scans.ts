/**
 * Counts the scans (SOS segments) of a JPEG from its markers, without decoding: a progressive JPEG is decoded by
 * reading every scan over the whole image, so its cost grows with the scan count, and libvips cannot stop that
 * read part-way (sharp's timeout is checked only once pixels flow). Counting stops at `stopAfter + 1`.
 * One pass over the bytes with Buffer.indexOf: a few milliseconds for the largest body accepted.
 */
export function countJpegScans(bytes: Uint8Array, stopAfter = Number.MAX_SAFE_INTEGER): number {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let scans = 0;
  let i = 2; // after SOI
  while (i + 1 < buf.length) {
    if (buf[i] !== 0xff) return scans; // not a marker: the decoder will say what is wrong
    let m = buf[i + 1] as number;
    while (m === 0xff && i + 2 < buf.length) m = buf[++i + 1] as number; // fill bytes
    if (m === 0xd9) return scans; // EOI
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2;
      continue;
    }
    if (i + 3 >= buf.length) return scans;
    const next = i + 2 + buf.readUInt16BE(i + 2);
    if (m !== 0xda) {
      i = next;
      continue;
    }
    if (++scans > stopAfter) return scans;
    // Entropy-coded data: runs to the next marker that is neither a stuffed 0xFF00 nor a restart marker.
    let j = next;
    for (;;) {
      j = buf.indexOf(0xff, j);
      if (j < 0 || j + 1 >= buf.length) return scans;
      const after = buf[j + 1] as number;
      if (after === 0x00 || after === 0xff || (after >= 0xd0 && after <= 0xd7)) {
        j += after === 0xff ? 1 : 2;
        continue;
      }
      break;
    }
    i = j;
  }
  return scans;
}
