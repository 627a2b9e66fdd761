import type { FastifyInstance, FastifyReply } from 'fastify';
import { OcularError } from '../errors.js';
import type { ModelRegistry } from '../core/registry.js';
import { sendError } from './errors.js';

/**
 * Every request not yet answered, so that a forced shutdown (a second SIGTERM, or the grace period running out)
 * still answers each of them, 503 DRAINING with Retry-After, instead of cutting its connection. A normal drain
 * never needs this: app.close() waits for every answer.
 *
 * Forcing cannot stop a batch already inside onnxruntime (native code is not interruptible, and a worker must not
 * be terminated inside it: see session-pool.ts); its requests are answered 503 now, and the batch's late result
 * is discarded when the process exits.
 */
export interface InFlight {
  /** Requests received and not yet answered. */
  readonly open: number;
  /** Requests other than GET/HEAD received since the start (a drain waits until this stops moving). */
  readonly received: number;
  /**
   * Resolves once no request is open and none has arrived for `quietMs`, or after `maxMs`. Used on SIGTERM before
   * the listener closes: connections the kernel accepted just before the signal get parsed and answered (503
   * DRAINING for a new prediction) instead of being reset with the listening socket.
   */
  settle(quietMs: number, maxMs: number): Promise<boolean>;
  /**
   * Rejects every queued request (their handlers answer 503 DRAINING), then answers 503 DRAINING, with
   * `Connection: close`, every request still unanswered. Resolves with the number answered here once their
   * answers are written, or after `maxWaitMs`.
   */
  answerAll(maxWaitMs?: number): Promise<number>;
}

declare module 'fastify' {
  interface FastifyInstance {
    inFlight: InFlight;
  }
}

export function registerInFlight(app: FastifyInstance, models: ModelRegistry): void {
  const open = new Set<FastifyReply>();
  let received = 0;
  app.addHook('onRequest', async (request, reply) => {
    // Work arriving, not probes: a prober polling /readyz must not keep a drain from settling.
    if (request.method !== 'GET' && request.method !== 'HEAD') received++;
    // While draining, every answer closes its connection, so keep-alive clients reconnect elsewhere.
    if (models.isDraining) void reply.header('connection', 'close');
    open.add(reply);
    reply.raw.once('close', () => open.delete(reply));
  });

  const inFlight: InFlight = {
    get open() {
      return open.size;
    },
    get received() {
      return received;
    },
    async settle(quietMs, maxMs) {
      const deadline = performance.now() + maxMs;
      let seen = received;
      let quietSince = performance.now();
      while (performance.now() < deadline) {
        if (received !== seen || open.size > 0) {
          seen = received;
          quietSince = performance.now();
        } else if (performance.now() - quietSince >= quietMs) {
          return true;
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return false;
    },
    async answerAll(maxWaitMs = 1000) {
      models.destroyQueues();
      // Let the handlers whose requests were queued answer their own 503 first.
      await new Promise((resolve) => setImmediate(resolve));
      const written: Promise<void>[] = [];
      let answered = 0;
      for (const reply of open) {
        if (reply.sent || reply.raw.headersSent || reply.raw.destroyed) continue;
        answered++;
        written.push(new Promise<void>((resolve) => reply.raw.once('close', () => resolve()).once('finish', () => resolve())));
        void reply.header('connection', 'close');
        sendError(reply, new OcularError('DRAINING'));
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(written),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, maxWaitMs);
          timer.unref();
        }),
      ]);
      clearTimeout(timer);
      return answered;
    },
  };
  app.decorate('inFlight', inFlight);
}
