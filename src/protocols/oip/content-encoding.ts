import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { createDeflate, createGunzip, createGzip, createInflate, type Gunzip, type Inflate } from 'node:zlib';
import { OcularError, capText } from '../../errors.js';

/**
 * HTTP compression of the v2 API, as Triton's clients use it (`request_compression_algorithm`,
 * `response_compression_algorithm`): a request body with `Content-Encoding: gzip` or `deflate` (zlib, as
 * Python's zlib.compress writes it) is decompressed as it arrives, in a stage of its own ahead of the body reader;
 * an inference answer is compressed when `Accept-Encoding` asks for gzip or deflate.
 *
 * Bounds: the decompressed bytes count against the route's body limit, and the stage stops (413, the inflater
 * destroyed) as soon as they pass it, so a gzip bomb costs at most the limit plus one zlib chunk (16 KiB) of
 * memory and the time to inflate that much, never its full size. The compressed bytes are bounded by the same
 * limit (Fastify checks Content-Length and the bytes received).
 */

export type ContentCoding = 'gzip' | 'deflate';

/** A Content-Encoding header's value, lower-cased and trimmed ('' when absent). */
function codingOf(header: string | string[] | undefined): string {
  return header === undefined ? '' : (Array.isArray(header) ? header.join(',') : header).trim().toLowerCase();
}

/** Whether a body under this Content-Encoding is sent as it is (no header, or identity). */
export function isIdentityCoding(header: string | string[] | undefined): boolean {
  const value = codingOf(header);
  return value === '' || value === 'identity';
}

/** The request's coding: undefined for none or identity; 415 for any other (or a list of several). */
export function requestCoding(header: string | string[] | undefined): ContentCoding | undefined {
  if (isIdentityCoding(header)) return undefined;
  const value = codingOf(header);
  if (value === 'gzip' || value === 'x-gzip') return 'gzip';
  if (value === 'deflate') return 'deflate';
  throw new OcularError(
    'UNSUPPORTED_CONTENT_ENCODING',
    `Content-Encoding ${JSON.stringify(capText(value, 40))} is not one this server reads (gzip, deflate or identity)`,
  );
}

/** A stream Fastify's body reader accepts in place of the socket: it reports the bytes received before decoding. */
type DecodedBody = Transform & { receivedEncodedLength: number };

/**
 * The body, decompressed, failing with BODY_TOO_LARGE once more than `limitBytes` come out of it and with
 * INVALID_REQUEST when it does not decompress.
 */
export function decompressBody(payload: Readable, coding: ContentCoding, limitBytes: number): Readable {
  const inflater: Gunzip | Inflate = coding === 'gzip' ? createGunzip() : createInflate();
  let out = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      out += chunk.length;
      if (out > limitBytes) {
        done(new OcularError('BODY_TOO_LARGE', `the ${coding} body decompresses to more than the limit of ${limitBytes} bytes`));
        return;
      }
      done(null, chunk);
    },
  }) as DecodedBody;
  counter.receivedEncodedLength = 0;
  // The body reader stops listening once it has refused the body itself; a later error must not go unhandled.
  counter.on('error', () => {});
  const countEncoded = (chunk: Buffer): void => {
    counter.receivedEncodedLength += chunk.length;
  };
  payload.on('data', countEncoded);
  const fail = (err: Error): void => {
    if (counter.destroyed) return;
    counter.destroy(err instanceof OcularError ? err : new OcularError('INVALID_REQUEST', `the ${coding} body does not decompress: ${capText(err.message, 120)}`));
  };
  inflater.on('error', fail);
  payload.on('error', (err) => counter.destroy(err));
  // Once the counter fails (413) or is done with, the inflater stops and no more of the body is read: the answer
  // then closes the connection (sendError's Connection: close for a body still coming).
  counter.on('close', () => {
    payload.off('data', countEncoded);
    payload.unpipe(inflater);
    if (!payload.readableEnded) payload.pause();
    inflater.destroy();
  });
  payload.pipe(inflater).pipe(counter);
  return counter;
}

/**
 * The coding an answer is compressed with: gzip or deflate when `Accept-Encoding` lists it with a non-zero q
 * (gzip preferred at equal q), else none.
 */
export function responseCoding(header: string | string[] | undefined): ContentCoding | undefined {
  if (header === undefined) return undefined;
  const value = Array.isArray(header) ? header.join(',') : header;
  let best: { coding: ContentCoding; q: number } | undefined;
  for (const part of value.slice(0, 1024).split(',')) {
    const [token, ...params] = part.trim().toLowerCase().split(';');
    if (token !== 'gzip' && token !== 'x-gzip' && token !== 'deflate') continue;
    const qParam = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    const q = qParam === undefined ? 1 : Number(qParam.slice(2));
    if (!Number.isFinite(q) || q <= 0) continue;
    const coding: ContentCoding = token === 'deflate' ? 'deflate' : 'gzip';
    if (best === undefined || q > best.q || (q === best.q && coding === 'gzip')) best = { coding, q };
  }
  return best?.coding;
}

/** The answer compressed as a stream (zlib runs in libuv's thread pool, not on the event loop). */
export function compressAnswer(body: Readable | Buffer | string, coding: ContentCoding): Readable {
  const zip = coding === 'gzip' ? createGzip() : createDeflate();
  if (typeof body === 'string' || Buffer.isBuffer(body)) zip.end(body);
  else {
    body.on('error', (err) => zip.destroy(err));
    zip.on('close', () => body.destroy());
    body.pipe(zip);
  }
  return zip;
}
