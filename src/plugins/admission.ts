import fp from 'fastify-plugin';
import type { ModelHandle } from '../core/model-handle.js';
import { OcularError } from '../errors.js';

/**
 * Admission control for the inference routes (/v1 predict and /v2 infer): a model takes at most its queue bound
 * plus what its workers run at once (decoding included), counted in images (a multipart file, a v2 BYTES element)
 * or requests (a raw image, a tensor request); past that a request is refused 503 QUEUE_FULL (with
 * Retry-After, by each route's error sender) before its body is decoded, so overload costs microseconds per
 * refusal instead of a decode and a wait, and memory stays bounded. Both APIs count against one bound per model
 * name (one `app.admission` per app, one counter), since they share the model's queue and workers.
 */
export interface Admission {
  /**
   * Admits `count` units of work (images; 1 by default) for `model` until `answered` emits 'close' (the answer
   * written, or the connection gone), or throws QUEUE_FULL. Over HTTP `answered` is the raw response (Fastify's
   * `reply.raw`); any transport can pass an emitter of its own. A request admitted as one and found to hold n
   * images (once its header or parts are read) is admitted again for the n - 1 others, before they are decoded.
   */
  admit(model: ModelHandle, answered: Answered, count?: number): void;
}

/** Emits 'close' once, when a request's answer is written or its connection is gone. */
export interface Answered {
  once(event: 'close', listener: () => void): unknown;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The admission shared by /v1 predict and /v2 infer. */
    admission: Admission;
  }
}

export function createAdmission(): Admission {
  const admitted = new Map<string, number>();
  return {
    admit(model, answered, count = 1) {
      if (count <= 0) return;
      const first = model.stages[0];
      const limit = first !== undefined ? first.batching.maxQueueSize + first.batchLimit * first.pool.instances : Infinity;
      const current = admitted.get(model.name) ?? 0;
      if (current + count > limit) {
        throw new OcularError('QUEUE_FULL', `model ${model.name} has ${current} images in progress; ${count} more would pass its limit of ${limit}`);
      }
      admitted.set(model.name, current + count);
      answered.once('close', () => {
        const left = (admitted.get(model.name) ?? count) - count;
        if (left > 0) admitted.set(model.name, left);
        else admitted.delete(model.name);
      });
    },
  };
}

/** Decorates the app with its admission; it holds counters only, so there is nothing to close. */
export const admissionPlugin = fp(
  async (app) => {
    app.decorate('admission', createAdmission());
  },
  { name: 'ocular-admission', fastify: '5.x' },
);
