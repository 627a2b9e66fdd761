/**
 * COCO run-length encoding, in the compressed string form pycocotools writes (`maskApi.c`, rleToString) and
 * `pycocotools.mask.decode({'size': [h, w], 'counts': s})` reads: counts are run lengths over the mask in
 * column-major order (down each column, left to right), starting with a run of zeros (possibly empty). Each
 * count from the third on is written as its difference from the count two before; every value is written in
 * 5-bit groups, least significant first, as the characters 48 + group (+ 32 when more groups follow), the last
 * group's 0x10 bit carrying the sign.
 */

export function encodeRleCounts(counts: readonly number[]): string {
  const chars: number[] = [];
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i] as number;
    if (i > 2) x -= counts[i - 2] as number;
    let more = true;
    while (more) {
      let c = x & 0x1f;
      // An arithmetic shift by 5 without the 32-bit limit of >>: counts reach the pixel count of an image.
      x = Math.floor(x / 32);
      more = (c & 0x10) !== 0 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      chars.push(c + 48);
    }
  }
  return charsToString(chars);
}

/** String.fromCharCode in slices: spreading millions of arguments at once overflows the stack. */
function charsToString(chars: readonly number[]): string {
  let out = '';
  for (let i = 0; i < chars.length; i += 8192) out += String.fromCharCode(...chars.slice(i, i + 8192));
  return out;
}
