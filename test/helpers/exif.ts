/** EXIF orientation fixtures: what a camera stores for each orientation value. */

/**
 * The stored (unrotated) pixels that EXIF orientation `o` turns into the upright w x h image of `channels` bytes a
 * pixel: the stored pixel at (x, y) shows the upright pixel given by the EXIF definition of each value.
 */
export function storedPixels(upright: Buffer, w: number, h: number, o: number, channels = 3): { pixels: Buffer; width: number; height: number } {
  const at: Record<number, (x: number, y: number) => [number, number]> = {
    1: (x, y) => [x, y],
    2: (x, y) => [w - 1 - x, y],
    3: (x, y) => [w - 1 - x, h - 1 - y],
    4: (x, y) => [x, h - 1 - y],
    5: (x, y) => [y, x],
    6: (x, y) => [w - 1 - y, x],
    7: (x, y) => [w - 1 - y, h - 1 - x],
    8: (x, y) => [y, h - 1 - x],
  };
  const map = at[o];
  if (map === undefined) throw new RangeError(`EXIF orientation ${o}`);
  const [sw, sh] = o >= 5 ? [h, w] : [w, h];
  const pixels = Buffer.alloc(sw * sh * channels);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      const [ux, uy] = map(x, y);
      upright.copy(pixels, (y * sw + x) * channels, (uy * w + ux) * channels, (uy * w + ux) * channels + channels);
    }
  }
  return { pixels, width: sw, height: sh };
}
