import type { ImageFormat } from '../../config/image-formats.js';

/** Image formats told from their magic numbers: the first check on untrusted bytes (see image.ts). */

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

/** Printable ASCII, tab, CR and LF: what a text body is made of. */
const isTextByte = (b: number): boolean => (b >= 0x20 && b < 0x7f) || b === 0x09 || b === 0x0a || b === 0x0d;

/**
 * What a body that is no image looks like, for the 415 answer that says what was received: a URL, JSON, markup or
 * other text (quoted, cut to `maxChars`), or its first bytes in hex. Reads at most the first 64 bytes.
 */
export function describeBody(bytes: Uint8Array, maxChars = 48): string {
  if (bytes.length === 0) return 'an empty body';
  const head = bytes.subarray(0, 64);
  if (head.every(isTextByte)) {
    const text = Buffer.from(head).toString('latin1').trim();
    const quoted = JSON.stringify(text.length > maxChars ? `${text.slice(0, maxChars)}...` : text);
    if (/^https?:\/\//i.test(text)) return `a URL, ${quoted}`;
    if (/^[{[]/.test(text)) return `JSON, ${quoted}`;
    if (text.startsWith('<')) return `markup (HTML, XML or SVG), ${quoted}`;
    return `text, ${quoted}`;
  }
  const hex = Array.from(head.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return `${bytes.length} bytes beginning ${hex}`;
}
