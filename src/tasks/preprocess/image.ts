/**
 * Image bytes -> upright 8-bit RGB pixels at a model's tensor size, with sharp (libvips).
 *
 * Order of checks for untrusted bytes: magic number (format allow-list), then the header's pixel count (before any
 * pixel is decoded), then the decode itself, which libvips also bounds with limitInputPixels. Every failure leaves
 * this module as an OcularError: 415 for a format we refuse, 422 for too many pixels or undecodable data.
 *
 * Resizing matches the reference tensors in ../shared/models (made with sharp 0.35.5): one sharp pipeline per image
 * (so sharp's JPEG shrink-on-load applies), with the same resize calls the model READMEs give. Images with an EXIF
 * orientation other than 1 are oriented before they are resized (see prepareImage).
 */
import sharp from 'sharp';
import type { Metadata, OutputInfo, Sharp, SharpOptions } from 'sharp';
import type { InputSpec } from '../../config/input-spec.js';
import type { ImageTransform, PreparedImage } from '../../core/types.js';
import { OcularError } from '../../errors.js';

export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'avif';

export const IMAGE_FORMATS: readonly ImageFormat[] = ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif'];

/** Formats accepted when the configuration names none. GIF, TIFF and AVIF are opt-in; SVG is never accepted. */
export const DEFAULT_IMAGE_FORMATS: readonly ImageFormat[] = ['jpeg', 'png', 'webp'];

/** prepareImage's signature: the server passes either it or a preprocessing pool's `prepare` (process-pool.ts). */
export type ImagePreparer = (bytes: Buffer, spec: InputSpec, limits: DecodeLimits) => Promise<PreparedImage>;

export interface DecodeLimits {
  /** Largest width * height accepted, checked from the header before decoding. */
  maxInputPixels: number;
  allowedFormats: ReadonlySet<ImageFormat>;
}

/** A whole upright image: interleaved 8-bit RGB, width * height * 3 bytes. */
export interface DecodedImage {
  pixels: Buffer;
  width: number;
  height: number;
}

function ascii(bytes: Uint8Array, start: number, text: string): boolean {
  if (bytes.length < start + text.length) return false;
  for (let i = 0; i < text.length; i++) {
    if (bytes[start + i] !== text.charCodeAt(i)) return false;
  }
  return true;
}

function startsWith(bytes: Uint8Array, magic: readonly number[]): boolean {
  return bytes.length >= magic.length && magic.every((b, i) => bytes[i] === b);
}

function readUint32BE(bytes: Uint8Array, at: number): number {
  return (
    (((bytes[at] as number) << 24) >>> 0) +
    ((bytes[at + 1] as number) << 16) +
    ((bytes[at + 2] as number) << 8) +
    (bytes[at + 3] as number)
  );
}

/** ISO-BMFF `ftyp` box whose major or a compatible brand is avif (still) or avis (sequence). */
function isAvif(bytes: Uint8Array): boolean {
  if (bytes.length < 16 || !ascii(bytes, 4, 'ftyp')) return false;
  const boxSize = Math.min(readUint32BE(bytes, 0), bytes.length);
  if (boxSize < 16) return false;
  // Major brand at 8, minor version at 12, compatible brands from 16 to the end of the box.
  for (let at = 8; at + 4 <= boxSize; at += at === 8 ? 8 : 4) {
    if (ascii(bytes, at, 'avif') || ascii(bytes, at, 'avis')) return true;
  }
  return false;
}

/**
 * The image format from its magic number alone; undefined for anything else (SVG, HTML, JSON, text, HEIC, ...).
 * Content-Type headers and file names are never trusted.
 */
export function sniffFormat(bytes: Uint8Array): ImageFormat | undefined {
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return 'jpeg';
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
  if (ascii(bytes, 0, 'RIFF') && ascii(bytes, 8, 'WEBP')) return 'webp';
  if (ascii(bytes, 0, 'GIF87a') || ascii(bytes, 0, 'GIF89a')) return 'gif';
  if (startsWith(bytes, [0x49, 0x49, 0x2a, 0x00]) || startsWith(bytes, [0x4d, 0x4d, 0x00, 0x2a])) return 'tiff';
  if (isAvif(bytes)) return 'avif';
  return undefined;
}

/** libvips loader classes per format (buffer, file and stream sources). */
const LOADERS: Record<ImageFormat, readonly string[]> = {
  jpeg: ['VipsForeignLoadJpegBuffer', 'VipsForeignLoadJpegFile', 'VipsForeignLoadJpegSource'],
  png: ['VipsForeignLoadPngBuffer', 'VipsForeignLoadPngFile', 'VipsForeignLoadPngSource'],
  webp: ['VipsForeignLoadWebpBuffer', 'VipsForeignLoadWebpFile', 'VipsForeignLoadWebpSource'],
  gif: ['VipsForeignLoadNsgifBuffer', 'VipsForeignLoadNsgifFile', 'VipsForeignLoadNsgifSource'],
  tiff: ['VipsForeignLoadTiffBuffer', 'VipsForeignLoadTiffFile', 'VipsForeignLoadTiffSource'],
  avif: ['VipsForeignLoadHeifBuffer', 'VipsForeignLoadHeifFile', 'VipsForeignLoadHeifSource'],
};

/** sharp's metadata `format` name for each of our formats (AVIF is decoded by the HEIF loader). */
const SHARP_FORMAT: Record<ImageFormat, string> = {
  jpeg: 'jpeg',
  png: 'png',
  webp: 'webp',
  gif: 'gif',
  tiff: 'tiff',
  avif: 'heif',
};

export interface SharpSettings {
  /** libvips threads per image; default 1 (see configureSharp). */
  threadsPerImage?: number;
}

/**
 * Process-wide sharp/libvips settings; call once at startup, before the first image.
 *
 * - Loaders: every libvips loader is blocked (SVG, PDF, HEIC, FITS, Matlab, magick, ... are attack surface we
 *   never need), then only the allowed formats' loaders are unblocked. This is global to the process, which is
 *   why it is a startup step; prepareImage also checks the allow-list per request from the magic number.
 * - Cache off: the libvips operation cache pays off when the same input is processed repeatedly; a server sees
 *   each image once, so the cache would only hold memory (up to 50 MB by default) and skew memory readings.
 * - Concurrency 1: a server gets its parallelism from concurrent requests on libuv's thread pool, and
 *   onnxruntime wants the cores for inference; several libvips threads per image would oversubscribe the CPU
 *   and, with glibc's allocator, fragment memory (sharp itself defaults to 1 on glibc for that reason).
 */
export function configureSharp(
  allowed: readonly ImageFormat[] = DEFAULT_IMAGE_FORMATS,
  settings: SharpSettings = {},
): void {
  sharp.block({ operation: ['VipsForeignLoad'] });
  const unblock = [...new Set(allowed)].flatMap((format) => LOADERS[format]);
  if (unblock.length > 0) sharp.unblock({ operation: unblock });
  sharp.cache(false);
  sharp.concurrency(settings.threadsPerImage ?? 1);
}

/** Python 3's round(): halves go to the even neighbour (2.5 -> 2, 3.5 -> 4, -2.5 -> -2). */
export function pythonRound(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff < 0.5) return floor;
  if (diff > 0.5) return floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * PaddleOCR DetResizeForTest (resize_image_type0), step for step: ratio from the limit, int() truncation of the
 * scaled sides, then Python round to a multiple of 32, at least 32. 1280x960 with max 960 -> 720/32 = 22.5 -> 704.
 */
export function limitRound32Size(
  width: number,
  height: number,
  limitSideLen: number,
  limitType: 'max' | 'min',
): { width: number; height: number } {
  let ratio = 1;
  if (limitType === 'max') {
    if (Math.max(height, width) > limitSideLen) ratio = height > width ? limitSideLen / height : limitSideLen / width;
  } else if (Math.min(height, width) < limitSideLen) {
    ratio = height < width ? limitSideLen / height : limitSideLen / width;
  }
  const h = Math.trunc(height * ratio);
  const w = Math.trunc(width * ratio);
  return { width: Math.max(pythonRound(w / 32) * 32, 32), height: Math.max(pythonRound(h / 32) * 32, 32) };
}

// ---------------------------------------------------------------------------------------------------------------

/** Maps anything sharp throws to the catalog; OcularErrors pass through. */
function toOcularError(err: unknown): OcularError {
  if (err instanceof OcularError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const firstLine = message.split('\n', 1)[0]?.trim() ?? '';
  if (/exceeds pixel limit/i.test(message)) {
    return new OcularError('TOO_MANY_PIXELS', undefined, { cause: err });
  }
  if (/unsupported image format/i.test(message)) {
    // The loader is blocked (configureSharp) or libvips does not know the bytes.
    return new OcularError('UNSUPPORTED_MEDIA_TYPE', undefined, { cause: err });
  }
  const detail = firstLine.length > 0 ? `the image could not be decoded: ${firstLine}` : undefined;
  return new OcularError('IMAGE_DECODE_FAILED', detail, { cause: err });
}

function sharpLimit(limits: DecodeLimits): number {
  // limitInputPixels 0 would mean "no limit" to sharp: never pass it.
  return Math.max(1, Math.floor(limits.maxInputPixels));
}

function inputOptions(limits: DecodeLimits): SharpOptions {
  return {
    // 'error' refuses truncated and corrupt pixel data (no grey garbage), and tolerates the benign warnings
    // real photos often carry ('warning' would refuse those too).
    failOn: 'error',
    limitInputPixels: sharpLimit(limits),
    autoOrient: true,
    // First page / frame only for GIF, TIFF and animated WebP.
    pages: 1,
    // sequentialRead stays sharp's default (true): resize streams through the image, and sharp switches to
    // random access by itself where an EXIF rotation needs it.
  };
}

/**
 * Sniffs, then reads the header (no pixel data) and enforces the pixel limit. Returns the upright size and the EXIF
 * orientation (1 when there is none).
 */
async function checkInput(
  bytes: Buffer,
  limits: DecodeLimits,
): Promise<{ width: number; height: number; orientation: number }> {
  const format = sniffFormat(bytes);
  if (format === undefined) {
    throw new OcularError('UNSUPPORTED_MEDIA_TYPE', 'the body is not a recognised image format');
  }
  if (!limits.allowedFormats.has(format)) {
    throw new OcularError('UNSUPPORTED_MEDIA_TYPE', `${format} images are not accepted by this server`);
  }
  let meta: Metadata;
  try {
    // No limitInputPixels here: the header is read either way, and checking the count ourselves gives the
    // client the dimensions in the message.
    meta = await sharp(bytes, { limitInputPixels: false, failOn: 'error' }).metadata();
  } catch (err) {
    throw toOcularError(err);
  }
  if (meta.format !== SHARP_FORMAT[format]) {
    throw new OcularError('UNSUPPORTED_MEDIA_TYPE', `the body looks like ${format} but decodes as ${meta.format}`);
  }
  const pixels = meta.width * meta.height;
  if (!(pixels > 0)) throw new OcularError('IMAGE_DECODE_FAILED', 'the image has no pixels');
  if (pixels > limits.maxInputPixels) {
    throw new OcularError(
      'TOO_MANY_PIXELS',
      `the image is ${meta.width}x${meta.height} (${pixels} pixels), the limit is ${limits.maxInputPixels}`,
    );
  }
  return { width: meta.autoOrient.width, height: meta.autoOrient.height, orientation: meta.orientation ?? 1 };
}

/** Upright, alpha flattened onto `background`, 8-bit sRGB with exactly 3 channels, whatever the input's space. */
function openUpright(bytes: Buffer, limits: DecodeLimits, background: string): Sharp {
  return sharp(bytes, inputOptions(limits)).flatten({ background }).removeAlpha().toColourspace('srgb');
}

/** How an upright w x h image becomes the tensor: the resize call, then a pad or a crop. */
type ResizePlan =
  | { kind: 'fill'; width: number; height: number }
  | {
      kind: 'letterbox';
      /** Size of the resized image, and its place on the outWidth x outHeight canvas. */
      width: number;
      height: number;
      left: number;
      top: number;
      outWidth: number;
      outHeight: number;
      padValue: number;
    }
  | {
      kind: 'outside-crop';
      side: number;
      outWidth: number;
      outHeight: number;
      /** For extreme aspect ratios only: the centre of the upright image that is resized (see MAX_OUTSIDE_ASPECT). */
      preCrop?: { left: number; top: number; width: number; height: number };
    };

/**
 * The outside resize of shorter-side-center-crop scales the shorter side to `side`, so its longer side grows with the
 * aspect ratio: a 10000x1 PNG of a hundred bytes would become a 2,560,000 x 256 intermediate (about 2 GB and half a
 * minute of CPU) for a 224 x 224 crop. Past this ratio the longer side is first cut, centred, to this many times the
 * shorter: the centre crop taken afterwards lies inside it, so the answer is the same up to sub-pixel rounding.
 * Photos (within 4:1) never take this path, so their tensors stay those of the reference pipeline.
 */
export const MAX_OUTSIDE_ASPECT = 4;

function planResize(spec: InputSpec, width: number, height: number): ResizePlan {
  const resize = spec.resize;
  switch (resize.mode) {
    case 'stretch':
      return { kind: 'fill', width: spec.width, height: spec.height };
    case 'limit-round32':
      return { kind: 'fill', ...limitRound32Size(width, height, resize.limitSideLen, resize.limitType) };
    case 'letterbox': {
      const r = Math.min(spec.width / width, spec.height / height);
      // At least one pixel, for extreme aspect ratios where floor(w*r) would be 0.
      const nw = Math.min(spec.width, Math.max(1, Math.floor(width * r)));
      const nh = Math.min(spec.height, Math.max(1, Math.floor(height * r)));
      const centred = resize.anchor === 'center';
      return {
        kind: 'letterbox',
        width: nw,
        height: nh,
        left: centred ? Math.floor((spec.width - nw) / 2) : 0,
        top: centred ? Math.floor((spec.height - nh) / 2) : 0,
        outWidth: spec.width,
        outHeight: spec.height,
        padValue: resize.padValue,
      };
    }
    case 'shorter-side-center-crop':
      if (resize.shorterSide < spec.width || resize.shorterSide < spec.height) {
        throw new RangeError(
          `shorterSide ${resize.shorterSide} is smaller than the ${spec.width}x${spec.height} crop of the input spec`,
        );
      }
      {
        const short = Math.min(width, height);
        const cap = Math.max(1, Math.ceil(short * MAX_OUTSIDE_ASPECT));
        const cw = Math.min(width, cap);
        const ch = Math.min(height, cap);
        const preCrop =
          cw < width || ch < height
            ? { left: Math.floor((width - cw) / 2), top: Math.floor((height - ch) / 2), width: cw, height: ch }
            : undefined;
        return {
          kind: 'outside-crop',
          side: resize.shorterSide,
          outWidth: spec.width,
          outHeight: spec.height,
          ...(preCrop !== undefined && { preCrop }),
        };
      }
  }
}

function applyPlan(pipeline: Sharp, plan: ResizePlan, kernel: InputSpec['kernel']): Sharp {
  switch (plan.kind) {
    case 'fill':
      return pipeline.resize({ width: plan.width, height: plan.height, fit: 'fill', kernel });
    case 'letterbox': {
      const grey = { r: plan.padValue, g: plan.padValue, b: plan.padValue, alpha: 1 };
      return pipeline.resize({ width: plan.width, height: plan.height, fit: 'fill', kernel }).extend({
        left: plan.left,
        top: plan.top,
        right: plan.outWidth - plan.width - plan.left,
        bottom: plan.outHeight - plan.height - plan.top,
        background: grey,
      });
    }
    case 'outside-crop':
      // As the mobilenet README (torchvision convention): shorter side to `side`, the longer side as sharp
      // rounds it; the centre crop is done on the raw pixels (see finish), so its offsets come from the size
      // sharp actually produced, shrink-on-load included.
      return (plan.preCrop !== undefined ? pipeline.extract(plan.preCrop) : pipeline).resize({
        width: plan.side,
        height: plan.side,
        fit: 'outside',
        kernel,
      });
  }
}

/**
 * Crops an interleaved RGB image in place: row y of the crop moves to the start of the buffer, in increasing y. Each
 * row's source lies at or after its destination and after every earlier row's destination (srcWidth >= width), so
 * no row is overwritten before it is read, and Buffer.copy moves overlapping bytes correctly. The result is a view
 * of the front of `src`: no allocation, one pass over the crop.
 */
export function cropRgbInPlace(src: Buffer, srcWidth: number, left: number, top: number, width: number, height: number): Buffer {
  if (left < 0 || top < 0 || left + width > srcWidth || (top + height) * srcWidth * 3 > src.length) {
    throw new RangeError(`crop ${width}x${height}+${left}+${top} does not fit a ${srcWidth}-wide image of ${src.length} bytes`);
  }
  const row = width * 3;
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * srcWidth + left) * 3;
    if (from !== y * row) src.copy(src, y * row, from, from + row);
  }
  return src.subarray(0, row * height);
}

async function runPlan(
  pipeline: Sharp,
  plan: ResizePlan,
  kernel: InputSpec['kernel'],
  width: number,
  height: number,
): Promise<PreparedImage> {
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await applyPlan(pipeline, plan, kernel).raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw toOcularError(err);
  }
  const { data, info } = out;
  if (info.channels !== 3) {
    throw new OcularError('IMAGE_DECODE_FAILED', `decoding gave ${info.channels} channels, expected 3`);
  }
  const transform: ImageTransform = {
    originalWidth: width,
    originalHeight: height,
    scaleX: 1,
    scaleY: 1,
    offsetX: 0,
    offsetY: 0,
  };
  switch (plan.kind) {
    case 'fill':
      transform.scaleX = info.width / width;
      transform.scaleY = info.height / height;
      return { pixels: data, width: info.width, height: info.height, transform };
    case 'letterbox':
      transform.scaleX = plan.width / width;
      transform.scaleY = plan.height / height;
      transform.offsetX = plan.left;
      transform.offsetY = plan.top;
      return { pixels: data, width: info.width, height: info.height, transform };
    case 'outside-crop': {
      const left = Math.floor((info.width - plan.outWidth) / 2);
      const top = Math.floor((info.height - plan.outHeight) / 2);
      if (left < 0 || top < 0) {
        throw new OcularError('INTERNAL', `resize gave ${info.width}x${info.height}, smaller than the crop`);
      }
      const pre = plan.preCrop ?? { left: 0, top: 0, width, height };
      transform.scaleX = info.width / pre.width;
      transform.scaleY = info.height / pre.height;
      transform.offsetX = -left - pre.left * transform.scaleX;
      transform.offsetY = -top - pre.top * transform.scaleY;
      const pixels = cropRgbInPlace(data, info.width, left, top, plan.outWidth, plan.outHeight);
      return { pixels, width: plan.outWidth, height: plan.outHeight, transform };
    }
  }
}

/**
 * Decodes untrusted image bytes and resizes them for a model. The result's pixels are RGB, spec-sized (for
 * limit-round32, the computed size); `transform` maps upright-original coordinates to the tensor.
 * Throws only OcularError: UNSUPPORTED_MEDIA_TYPE, TOO_MANY_PIXELS, IMAGE_DECODE_FAILED.
 *
 * Orientation 1 (or none), nearly every photo: one sharp pipeline, so JPEG shrink-on-load applies and the tensors
 * are those of the reference pipeline. EXIF orientation 2-8: in one pipeline libvips resizes in the stored
 * orientation and rotates afterwards, which gave tensors several levels away from an upright copy's (and flipped a
 * borderline top-1), so such an image is decoded and oriented in full first (at most maxInputPixels * 3 bytes,
 * briefly) and then resized like an upright raw image: its tensor equals an upright PNG copy's (docs/RELIABILITY.md).
 */
export async function prepareImage(bytes: Buffer, spec: InputSpec, limits: DecodeLimits): Promise<PreparedImage> {
  const { width, height, orientation } = await checkInput(bytes, limits);
  if (orientation > 1) return prepareFromDecoded(await decodeChecked(bytes, limits, spec.background), spec);
  const plan = planResize(spec, width, height);
  return runPlan(openUpright(bytes, limits, spec.background), plan, spec.kernel, width, height);
}

/** The whole upright image as RGB (OCR crops text lines out of it after detection). */
export async function decodeImage(bytes: Buffer, limits: DecodeLimits, background = '#ffffff'): Promise<DecodedImage> {
  await checkInput(bytes, limits);
  return decodeChecked(bytes, limits, background);
}

/** decodeImage after checkInput has passed. */
async function decodeChecked(bytes: Buffer, limits: DecodeLimits, background: string): Promise<DecodedImage> {
  try {
    const { data, info } = await openUpright(bytes, limits, background).raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) {
      throw new OcularError('IMAGE_DECODE_FAILED', `decoding gave ${info.channels} channels, expected 3`);
    }
    return { pixels: data, width: info.width, height: info.height };
  } catch (err) {
    throw toOcularError(err);
  }
}

/** Resizes an already decoded RGB image for a model (e.g. the OCR detector's input), like prepareImage. */
export async function prepareFromDecoded(decoded: DecodedImage, spec: InputSpec): Promise<PreparedImage> {
  const { width, height } = decoded;
  if (decoded.pixels.length < width * height * 3) {
    throw new RangeError(`decoded image holds ${decoded.pixels.length} bytes, ${width}x${height}x3 needs more`);
  }
  const plan = planResize(spec, width, height);
  // Our own buffer, already bounded by the decode limits: no pixel limit here.
  const pipeline = sharp(decoded.pixels, { raw: { width, height, channels: 3 }, limitInputPixels: false });
  return runPlan(pipeline, plan, spec.kernel, width, height);
}
