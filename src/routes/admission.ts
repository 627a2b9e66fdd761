import type { FastifyReply } from 'fastify';
import type { ModelHandle, ModelRegistry } from '../core/registry.js';
import { OcularError } from '../errors.js';

/**
 * Admission control for the inference routes (/v1 predict and /v2 infer): a model takes at most its queue bound
 * plus what its workers run at once (decoding included); past that a request is refused 503 QUEUE_FULL (with
 * Retry-After, by each route's error sender) before its body is decoded, so overload costs microseconds per
 * refusal instead of a decode and a wait, and memory stays bounded. Both APIs count against one bound per model
 * name (one registry, one counter), since they share the model's queue and workers.
 */
export interface Admission {
  /** Admits one request for `model` until `reply` closes (sent, or the connection gone), or throws QUEUE_FULL. */
  admit(model: ModelHandle, reply: FastifyReply): void;
}

const admissions = new WeakMap<ModelRegistry, Admission>();

/** The admission of a registry's models, created on first use and shared by every route of that registry. */
export function admissionOf(models: ModelRegistry): Admission {
  let admission = admissions.get(models);
  if (admission === undefined) {
    admission = createAdmission();
    admissions.set(models, admission);
  }
  return admission;
}

export function createAdmission(): Admission {
  const admitted = new Map<string, number>();
  return {
    admit(model, reply) {
      const first = model.stages[0];
      const limit = first !== undefined ? first.batching.maxQueueSize + first.batchLimit * first.pool.instances : Infinity;
      const current = admitted.get(model.name) ?? 0;
      if (current >= limit) throw new OcularError('QUEUE_FULL', `model ${model.name} has ${current} requests in progress, its limit`);
      admitted.set(model.name, current + 1);
      reply.raw.once('close', () => {
        const left = (admitted.get(model.name) ?? 1) - 1;
        if (left > 0) admitted.set(model.name, left);
        else admitted.delete(model.name);
      });
    },
  };
}
