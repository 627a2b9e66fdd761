import { Transform, type TransformCallback } from 'node:stream';
import fp from 'fastify-plugin';
import { OcularError } from '../errors.js';
import type { Answered } from './admission.js';

/**
 * A cap on the request bytes being read or held across all requests (`OCULAR_MAX_INFLIGHT_BODY_BYTES`): each
 * request's bytes are counted from when its body starts to be read until its answer is written or its connection
 * is gone, the time its body (and what is parsed from it) is held. A declared body (Content-Length) is reserved
 * whole before any byte is read, and refused 503 BODY_BYTES_BUSY (Retry-After) past the cap; a chunked body is
 * counted as its bytes arrive and cut off with the same error when they cross it. Runs in preParsing, after auth
 * and the inference routes' own decision (404, 503 QUEUE_FULL), which cost nothing to hold.
 *
 * A plugin: it owns the count (`app.bodyBudget`); nothing to close, every reservation ends with its response.
 */
export interface BodyBudget {
  /** Bytes reserved now. */
  readonly held: number;
  readonly limitBytes: number;
  /**
   * Reserves `bytes` for a request of another transport (gRPC, whose messages arrive whole) until `answered` emits
   * 'close', or throws BODY_BYTES_BUSY past the cap.
   */
  reserve(bytes: number, answered: Answered): void;
}

declare module 'fastify' {
  interface FastifyInstance {
    bodyBudget: BodyBudget;
  }
}

export interface BodyBudgetOptions {
  limitBytes: number;
}

export const bodyBudgetPlugin = fp<BodyBudgetOptions>(
  async (app, { limitBytes }) => {
    let held = 0;
    const refuse = (wanted: number) =>
      new OcularError('BODY_BYTES_BUSY', `${held} request body bytes are in flight; ${wanted} more would pass the limit of ${limitBytes} (OCULAR_MAX_INFLIGHT_BODY_BYTES)`);
    app.decorate('bodyBudget', {
      get held() {
        return held;
      },
      limitBytes,
      reserve(bytes, answered) {
        if (!(bytes > 0)) return;
        if (held + bytes > limitBytes) throw refuse(bytes);
        held += bytes;
        answered.once('close', () => {
          held -= bytes;
        });
      },
    });

    app.addHook('preParsing', async (request, reply, payload) => {
      const declared = Number(request.headers['content-length']);
      const chunked = request.headers['transfer-encoding'] !== undefined;
      if (!chunked && !(declared > 0)) return payload;
      let mine = 0;
      // Every byte reserved for this request is given back once, when its answer is written or its connection gone.
      reply.raw.once('close', () => {
        held -= mine;
        mine = 0;
      });
      if (!chunked) {
        if (held + declared > limitBytes) throw refuse(declared);
        held += declared;
        mine = declared;
        return payload;
      }
      const counted = new Transform({
        transform(chunk: Buffer, _encoding, callback: TransformCallback) {
          if (held + chunk.length > limitBytes) {
            callback(refuse(chunk.length));
            return;
          }
          held += chunk.length;
          mine += chunk.length;
          callback(null, chunk);
        },
      });
      payload.on('error', (err) => counted.destroy(err));
      return payload.pipe(counted);
    });
  },
  { name: 'ocular-body-budget', fastify: '5.x' },
);
