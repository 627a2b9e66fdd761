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
 *
 * Its neighbours: sniff-format.ts (magic numbers), sharp-config.ts (the process-wide libvips settings and loader
 * allow-list), resize-plan.ts (the geometry, which this module carries out with sharp).
 */
import sharp from 'sharp';
import type { Metadata, OutputInfo, Sharp, SharpOptions } from 'sharp';
import type { ImageFormat } from '../../config/image-formats.js';
import type { InputSpec } from '../../config/input-spec.js';
import type { ImageTransform, PreparedImage } from '../types.js';
import { OcularError } from '../../errors.js';
import { countJpegScans } from './jpeg-scans.js';
import { planResize, type ResizePlan } from './resize-plan.js';
import { SHARP_FORMAT } from './sharp-config.js';
import { describeBody, sniffFormat } from './sniff-format.js';

/**
 * prepareImage's signature: the server passes either it or a preprocessing pool's `prepare` (process-pool.ts).
 * `signal`: the client's; a request whose client has left is not sent to a preprocessing process.
 */
export type ImagePreparer = (bytes: Buffer, spec: InputSpec, limits: DecodeLimits, signal?: AbortSignal) => Promise<PreparedImage>;

export interface DecodeLimits {
  /** Largest width * height accepted, checked from the header before decoding. */
  maxInputPixels: number;
  allowedFormats: ReadonlySet<ImageFormat>;
  /** Most scans of a JPEG (OCULAR_MAX_JPEG_SCANS), counted from its markers before decoding; absent: no limit. */
  maxJpegScans?: number | undefined;
  /**
   * Most time one image's decode and resize may take (OCULAR_DECODE_TIMEOUT_MS): sharp's timeout, which is in whole
   * seconds and checked only while pixels flow, and a decode that ends past it is refused all the same (underLimit);
   * absent: no limit.
   */
  decodeTimeoutMs?: number | undefined;
}

/** A whole upright image: interleaved 8-bit RGB, width * height * 3 bytes. */
export interface DecodedImage {
  pixels: Buffer;
  width: number;
  height: number;
}

/** Maps anything sharp throws to the catalog; OcularErrors pass through. */
function toOcularError(err: unknown, limits?: DecodeLimits): OcularError {
  if (err instanceof OcularError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const firstLine = message.split('\n', 1)[0]?.trim() ?? '';
  if (/^timeout: /.test(message) && limits?.decodeTimeoutMs !== undefined) {
    return decodeTimeoutError(limits.decodeTimeoutMs, err);
  }
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

/** The answer to an image whose decode ran past the time limit, here or in a preprocessing process. */
export function decodeTimeoutError(decodeTimeoutMs: number, cause?: unknown): OcularError {
  return new OcularError(
    'IMAGE_TOO_COMPLEX',
    `decoding the image took longer than the limit of ${decodeTimeoutMs} ms (OCULAR_DECODE_TIMEOUT_MS)`,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * Runs a decode under the limit: sharp's timeout stops it while pixels flow (withTimeout), and a decode that ends
 * past the limit anyway is refused too. sharp checks its timeout only as pixels come out, so a progressive JPEG
 * whose scans are all decoded before the first pixel can finish in a few output strips with no check past the
 * limit (seen: a 2.8 s decode answered 200 under a 1 s limit). The time counted is from the hand-over to sharp.
 */
async function underLimit<T>(limits: DecodeLimits | undefined, decode: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const out = await decode();
  const limit = limits?.decodeTimeoutMs;
  if (limit !== undefined && performance.now() - started > limit) throw decodeTimeoutError(limit);
  return out;
}

/** Applies the decode time limit to a pipeline: sharp's timeout, in whole seconds (at least 1). */
function withTimeout(pipeline: Sharp, limits: Pick<DecodeLimits, 'decodeTimeoutMs'>): Sharp {
  const ms = limits.decodeTimeoutMs;
  return ms === undefined ? pipeline : pipeline.timeout({ seconds: Math.max(1, Math.ceil(ms / 1000)) });
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
 * The 415 for bytes that are no image at all: which formats are accepted, what was received, and what to send
 * instead (a URL in the body is the usual mistake: nothing is fetched). The Content-Type is not the reason (any is
 * accepted, the bytes decide), so it is not named.
 */
function notAnImage(bytes: Buffer, allowed: ReadonlySet<ImageFormat>): OcularError {
  return new OcularError(
    'UNSUPPORTED_MEDIA_TYPE',
    `the body is not an image in an accepted format (${[...allowed].join(', ')}): it is ${describeBody(bytes)}. ` +
      'Send the image file itself as the body (curl --data-binary @photo.jpg); URLs are not fetched',
  );
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
  if (format === undefined) throw notAnImage(bytes, limits.allowedFormats);
  if (!limits.allowedFormats.has(format)) {
    throw new OcularError(
      'UNSUPPORTED_MEDIA_TYPE',
      `${format} images are not accepted by this server (accepted: ${[...limits.allowedFormats].join(', ')}; OCULAR_IMAGE_FORMATS sets them)`,
    );
  }
  // Before any decoding: each scan of a progressive JPEG is a pass over the whole image that libvips cannot stop.
  if (format === 'jpeg' && limits.maxJpegScans !== undefined) {
    const scans = countJpegScans(bytes, limits.maxJpegScans);
    if (scans > limits.maxJpegScans) {
      throw new OcularError(
        'IMAGE_TOO_COMPLEX',
        `the JPEG has more than ${limits.maxJpegScans} scans, the limit (OCULAR_MAX_JPEG_SCANS)`,
      );
    }
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
  return withTimeout(sharp(bytes, inputOptions(limits)), limits).flatten({ background }).removeAlpha().toColourspace('srgb');
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
  limits?: DecodeLimits,
): Promise<PreparedImage> {
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await underLimit(limits, () => applyPlan(pipeline, plan, kernel).raw().toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw toOcularError(err, limits);
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
  return runPlan(openUpright(bytes, limits, spec.background), plan, spec.kernel, width, height, limits);
}

/** The whole upright image as RGB (OCR crops text lines out of it after detection). */
export async function decodeImage(bytes: Buffer, limits: DecodeLimits, background = '#ffffff'): Promise<DecodedImage> {
  await checkInput(bytes, limits);
  return decodeChecked(bytes, limits, background);
}

/** decodeImage after checkInput has passed. */
async function decodeChecked(bytes: Buffer, limits: DecodeLimits, background: string): Promise<DecodedImage> {
  try {
    const { data, info } = await underLimit(limits, () => openUpright(bytes, limits, background).raw().toBuffer({ resolveWithObject: true }));
    if (info.channels !== 3) {
      throw new OcularError('IMAGE_DECODE_FAILED', `decoding gave ${info.channels} channels, expected 3`);
    }
    return { pixels: data, width: info.width, height: info.height };
  } catch (err) {
    throw toOcularError(err, limits);
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
