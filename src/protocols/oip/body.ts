import type { FastifyRequest } from 'fastify';
import { errorCodes } from 'fastify';
import { readBodyStream } from '../../core/read-body.js';
import { isIdentityCoding } from './content-encoding.js';

/**
 * v2 request bodies, read into memory of their own instead of Fastify's concatenation of the socket's chunks (one
 * more copy of the whole body, made on the main thread at its end: about 100 ms for 200 MiB).
 *
 * - A body with a Content-Length goes into one buffer allocated at that size before its first byte is read (the
 *   cap on body bytes in flight, plugins/body-budget.ts, has reserved it already; the pages are touched only as
 *   bytes arrive). A declared size past the limit is 413 before any byte is read.
 * - A chunked body goes into segments that grow in bounded steps (SEGMENT_MIN_BYTES doubling up to
 *   SEGMENT_MAX_BYTES): nothing already read is ever copied again on the main thread, and memory grows by at most
 *   one segment more than what arrived.
 *
 * Every part is a view at the start of an ArrayBuffer nothing else uses, so the parser can hand the parts to a
 * parse thread without a copy (transferred), and the thread joins segments there (parser.ts).
 * Errors are Fastify's own, as for /v1 raw bodies: past the limit 413 (FST_ERR_CTP_BODY_TOO_LARGE), a body longer
 * or shorter than its Content-Length 400 (FST_ERR_CTP_INVALID_CONTENT_LENGTH), a stream error 400.
 */
export interface InferBody {
  /** The body's bytes in order; each the front of an ArrayBuffer of its own. */
  readonly parts: readonly Uint8Array[];
  readonly byteLength: number;
}

export const SEGMENT_MIN_BYTES = 64 * 1024;
export const SEGMENT_MAX_BYTES = 8 * 1024 * 1024;

export function isInferBody(value: unknown): value is InferBody {
  return typeof value === 'object' && value !== null && Array.isArray((value as InferBody).parts) && typeof (value as InferBody).byteLength === 'number';
}

/** The whole body in one buffer: the part itself when there is one, else a copy (for small bodies only). */
export function joinBody(body: InferBody): Buffer {
  const [only] = body.parts;
  if (body.parts.length === 1 && only !== undefined) return Buffer.from(only.buffer, only.byteOffset, only.byteLength);
  return Buffer.concat(body.parts, body.byteLength);
}

/** Fastify content-type parser: reads `payload` into an InferBody, within `bodyLimit` bytes. */
export function readInferBody(
  request: FastifyRequest,
  payload: NodeJS.ReadableStream,
  bodyLimit: number,
  done: (err: Error | null, body?: InferBody) => void,
): void {
  const header = request.headers['content-length'];
  const declared = header === undefined ? undefined : Number(header);
  if (declared !== undefined && declared > bodyLimit) {
    done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
    return;
  }
  // A compressed body (Content-Encoding, decompressed on its way here: content-encoding.ts) is longer than its
  // Content-Length says; it is read in segments, within the limit, like a chunked one.
  const sized = isIdentityCoding(request.headers['content-encoding']) && declared !== undefined && Number.isSafeInteger(declared) && declared >= 0;
  const parts: Uint8Array[] = [];
  // The part being filled, and how much of it is.
  let current: Buffer | undefined = sized ? Buffer.allocUnsafeSlow(declared) : undefined;
  let filled = 0;
  const write = (bytes: Buffer, received: number): void => {
    if (sized) {
      bytes.copy(current as Buffer, filled);
      filled += bytes.length;
      return;
    }
    let at = 0;
    while (at < bytes.length) {
      if (current === undefined || filled === current.length) {
        if (current !== undefined) parts.push(new Uint8Array(current.buffer, 0, filled));
        const next = current === undefined ? SEGMENT_MIN_BYTES : Math.min(current.length * 2, SEGMENT_MAX_BYTES);
        current = Buffer.allocUnsafeSlow(Math.max(1, Math.min(next, bodyLimit - received - at)));
        filled = 0;
      }
      const n = bytes.copy(current, filled, at);
      filled += n;
      at += n;
    }
  };
  readBodyStream(
    payload,
    {
      limit: bodyLimit,
      declared: sized ? declared : undefined,
      tooLarge: () => new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE(),
      lengthMismatch: () => new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH(),
      write,
    },
    (err, received) => {
      if (err !== undefined) {
        done(err);
        return;
      }
      if (current !== undefined && (filled > 0 || parts.length === 0)) parts.push(new Uint8Array(current.buffer, 0, filled));
      done(null, { parts, byteLength: received });
    },
  );
}
