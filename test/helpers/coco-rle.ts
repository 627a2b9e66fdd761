/**
 * A reference reader of COCO run-length encoding, written from pycocotools' maskApi.c (rleFrString, rleDecode)
 * independently of src/tasks/segmentation/rle.ts, so that tests check the server's masks the way a pycocotools
 * client reads them.
 */

/** The counts of a compressed RLE string. */
export function countsFromString(s: string): number[] {
  const counts: number[] = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= s.length) throw new Error('RLE string ends inside a value');
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && (c & 0x10) !== 0) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2] as number;
    counts.push(x);
  }
  return counts;
}

/** The h x w mask (row-major, 1 = in the mask) of an RLE whose counts run down the columns. */
export function decodeRle(rle: { size: [number, number]; counts: string }): Uint8Array {
  const [h, w] = rle.size;
  const counts = countsFromString(rle.counts);
  const total = counts.reduce((a, b) => a + b, 0);
  if (total !== h * w) throw new Error(`RLE counts sum to ${total}, not ${h} x ${w}`);
  const mask = new Uint8Array(h * w);
  let at = 0;
  counts.forEach((n, i) => {
    if (i % 2 === 1) {
      for (let j = at; j < at + n; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    at += n;
  });
  return mask;
}
