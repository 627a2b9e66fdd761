/**
 * Raw image bodies read into pooled buffers (src/core/body-pool.ts) instead of Fastify's per-request
 * concatenation, with Fastify's own limits and errors: a declared or received size past the body limit is 413
 * BODY_TOO_LARGE (naming the limit and its option), a body longer or shorter than its Content-Length is 400
 * (FST_ERR_CTP_INVALID_CONTENT_LENGTH), a stream error is 400. A body without Content-Length (chunked) is
 * collected and concatenated as before.
 *
 * Ownership: the request holds its pooled body (`request.pooledBody`); the route that uses the body claims it
 * (claimBody) and releases it once the pipeline's promise has settled; a body no route claimed (refused before
 * the pipeline: auth, validation, admission) is released when its response ends. A claimed body is never
 * released by the response: a client that goes away ends the response while sharp may still be reading the bytes.
 *
 * A plugin: it owns the app's BodyPool (`app.bodyPool`) and empties it on close.
 */
import type { FastifyRequest } from 'fastify';
import { errorCodes } from 'fastify';
import fp from 'fastify-plugin';
import { BodyPool, type BodyPoolOptions } from '../core/body-pool.js';
import { readBodyStream } from '../core/read-body.js';
import { OcularError } from '../errors.js';

/** A request's pooled body, until it goes back to the pool. */
export interface HeldBody {
  release(): void;
  claimed: boolean;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Buffers for raw image bodies. */
    bodyPool: BodyPool;
  }
  interface FastifyRequest {
    /** The pooled buffer holding this request's raw body; null when its body is not pooled. */
    pooledBody: HeldBody | null;
  }
}

/** Takes over the request's pooled body: call the function returned once nothing reads the body any more. */
export function claimBody(request: FastifyRequest): () => void {
  const held = request.pooledBody;
  if (held === null) return () => {};
  held.claimed = true;
  return held.release;
}

export interface RawBodyOptions {
  /** Content types read as raw bytes. */
  types: (string | RegExp)[];
  bodyLimit: number;
  /** The option that sets bodyLimit, named in the 413 so that whoever reads it knows what to change. */
  bodyLimitOption?: string;
  pool?: BodyPoolOptions;
}

/** `bytes` for a person: 20971520 -> "20 MiB", 1500 -> "1500 bytes". */
export function formatBytes(bytes: number): string {
  for (const [unit, size] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (bytes >= size) return `${Number((bytes / size).toFixed(1))} ${unit}`;
  }
  return `${bytes} bytes`;
}

/** The 413 for a body past `limit`: the limit, in bytes and readable, and the option that raises it. */
export function bodyTooLarge(limit: number, option: string | undefined, received?: number): OcularError {
  const what = received === undefined ? 'the request body is larger than' : `the request body (${formatBytes(received)}) is larger than`;
  return new OcularError(
    'BODY_TOO_LARGE',
    `${what} the limit of ${limit} bytes (${formatBytes(limit)})${option === undefined ? '' : `, set by ${option}`}`,
  );
}

export const rawBodyPlugin = fp<RawBodyOptions>(
  async (app, opts) => {
    const { bodyLimit } = opts;
    const tooLarge = (received?: number): OcularError => bodyTooLarge(bodyLimit, opts.bodyLimitOption, received);
    const pool = new BodyPool(opts.pool);
    app.decorate('bodyPool', pool);
    app.decorateRequest('pooledBody', null);
    app.addHook('onClose', async () => pool.close());
    app.addHook('onResponse', async (request) => {
      const held = request.pooledBody;
      if (held !== null && !held.claimed) held.release();
    });
    for (const type of opts.types) {
      app.addContentTypeParser(type, { bodyLimit }, (request, payload, done) => {
        const declared = Number(request.headers['content-length']);
        if (declared > bodyLimit) {
          done(tooLarge(declared), undefined);
          return;
        }
        const sized = Number.isInteger(declared) && declared >= 0;
        const body = sized ? pool.acquire(declared) : undefined;
        const chunks: Buffer[] = [];
        readBodyStream(
          payload,
          {
            limit: bodyLimit,
            declared: body !== undefined ? declared : undefined,
            tooLarge: () => tooLarge(),
            lengthMismatch: () => new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH(),
            write: (bytes, received) => {
              if (body !== undefined) bytes.copy(body.buffer, received);
              else chunks.push(bytes);
            },
          },
          (err, received) => {
            if (err !== undefined) {
              body?.release();
              done(err, undefined);
              return;
            }
            if (body !== undefined) request.pooledBody = { release: body.release, claimed: false };
            done(null, body !== undefined ? body.buffer : Buffer.concat(chunks, received));
          },
        );
      });
    }
  },
  { name: 'ocular-body-pool', fastify: '5.x' },
);
