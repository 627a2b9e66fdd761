import sharp from 'sharp';
import { DEFAULT_IMAGE_FORMATS, type ImageFormat } from '../../config/image-formats.js';

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
export const SHARP_FORMAT: Record<ImageFormat, string> = {
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
