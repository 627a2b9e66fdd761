/**
 * Raw image bodies read into pooled buffers (src/core/body-pool.ts) instead of Fastify's per-request
 * concatenation, with Fastify's own limits and errors: a declared or received size past the body limit is 413
 * (FST_ERR_CTP_BODY_TOO_LARGE), a body longer or shorter than its Content-Length is 400
 * (FST_ERR_CTP_INVALID_CONTENT_LENGTH), a stream error is 400. A body without Content-Length (chunked) is
 * collected and concatenated as before.
 *
 * Ownership: the route that uses the body claims it (claimBody) and releases it once the pipeline's promise has
 * settled; a body no route claimed (refused before the pipeline: auth, validation, admission) is released when
 * its response ends. A claimed body is never released by the response: a client that goes away ends the response
 * while sharp may still be reading the bytes.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { errorCodes } from 'fastify';
import type { BodyPool } from '../core/body-pool.js';

interface Held {
  release(): void;
  claimed: boolean;
}

const held = new WeakMap<FastifyRequest, Held>();

/** Takes over the request's pooled body: call the function returned once nothing reads the body any more. */
export function claimBody(request: FastifyRequest): () => void {
  const h = held.get(request);
  if (h === undefined) return () => {};
  h.claimed = true;
  return h.release;
}

export function registerRawBodyParser(
  app: FastifyInstance,
  opts: { types: (string | RegExp)[]; bodyLimit: number; pool: BodyPool },
): void {
  const { bodyLimit, pool } = opts;
  app.addHook('onResponse', async (request) => {
    const h = held.get(request);
    if (h !== undefined && !h.claimed) h.release();
  });
  for (const type of opts.types) {
    app.addContentTypeParser(type, { bodyLimit }, (request, payload, done) => {
      const declared = Number(request.headers['content-length']);
      if (declared > bodyLimit) {
        done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE(), undefined);
        return;
      }
      const sized = Number.isInteger(declared) && declared >= 0;
      const body = sized ? pool.acquire(declared) : undefined;
      const chunks: Buffer[] = [];
      let received = 0;
      const finish = (err: Error | undefined, value?: Buffer): void => {
        payload.removeListener('data', onData);
        payload.removeListener('end', onEnd);
        payload.removeListener('error', onError);
        if (err !== undefined) {
          body?.release();
          done(err, undefined);
          return;
        }
        if (body !== undefined) held.set(request, { release: body.release, claimed: false });
        done(null, value);
      };
      const onData = (chunk: Buffer | string): void => {
        const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        if (received + bytes.length > bodyLimit) {
          finish(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE());
          return;
        }
        if (body !== undefined) {
          if (received + bytes.length > declared) {
            finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
            return;
          }
          bytes.copy(body.buffer, received);
        } else {
          chunks.push(bytes);
        }
        received += bytes.length;
      };
      const onEnd = (): void => {
        if (body === undefined) {
          finish(undefined, Buffer.concat(chunks, received));
        } else if (received !== declared) {
          finish(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
        } else {
          finish(undefined, body.buffer);
        }
      };
      const onError = (err: Error & { statusCode?: number }): void => {
        if (!(typeof err.statusCode === 'number' && err.statusCode >= 400)) err.statusCode = 400;
        finish(err);
      };
      payload.on('data', onData);
      payload.on('end', onEnd);
      payload.on('error', onError);
      payload.resume();
    });
  }
}
