import type { FastifyReply, FastifyRequest } from 'fastify';
import { sendError } from '../plugins/errors.js';
import { serverTiming, type Admitted, type Exchange, type RequestLifecycle, type Target, type WorkContext } from './lifecycle.js';

/**
 * The request lifecycle (lifecycle.ts) over Fastify: an Exchange from a request and its reply, the decision taken
 * in the route's onRequest hook from the URL and headers before Fastify reads the body (a refusal is answered
 * there, and sendError closes a connection whose body is still coming), and the answer written back:
 * Server-Timing on success, the error in the format of the path otherwise (plugins/errors.ts).
 */

/** An AbortSignal that fires when the client goes away before its answer is sent. */
export function clientSignal(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished) controller.abort();
  };
  reply.raw.once('close', onClose);
  request.raw.once('aborted', onClose);
  return controller.signal;
}

export function fastifyExchange(request: FastifyRequest, reply: FastifyReply): Exchange {
  const trace = request.traceSpan;
  return { signal: clientSignal(request, reply), answered: reply.raw, log: request.log, ...(trace !== null && { trace }) };
}

/** Which model a request names, or undefined when its path parameters would fail the route's validation (400). */
export type TargetOf = (request: FastifyRequest) => Target | undefined;

export interface FastifyLifecycle {
  /**
   * The routes' `onRequest` hook: decides the request from its target before the body is read (404, 503 with
   * Retry-After), answering a refusal at once. A request whose parameters are invalid is left to validation.
   */
  decide(targetOf: TargetOf): (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined>;
  /**
   * Runs one request (admitted by `decide`, else admitted here); resolves with the work's value (Server-Timing set)
   * for the route to send, or undefined once the error is answered (or left unanswered when something else, a
   * forced drain, answered first).
   */
  handle<T>(request: FastifyRequest, reply: FastifyReply, target: Target, work: (ctx: WorkContext) => Promise<T>): Promise<T | undefined>;
  /**
   * The routes' `onRequestAbort` hook: a client that leaves mid-upload never reaches the handler, so it is counted
   * here; one whose handler ran, or that was refused, is counted by the lifecycle (once either way).
   */
  onRequestAbort(request: FastifyRequest): Promise<void>;
}

interface Decided {
  exchange: Exchange;
  /** Undefined: refused (already counted and answered). */
  admitted: Admitted | undefined;
}

export function fastifyLifecycle(lifecycle: RequestLifecycle): FastifyLifecycle {
  const handled = new WeakSet<FastifyRequest>();
  const decided = new WeakMap<FastifyRequest, Decided>();
  return {
    decide(targetOf) {
      return async (request, reply) => {
        const target = targetOf(request);
        if (target === undefined) return;
        const exchange = fastifyExchange(request, reply);
        const decision = lifecycle.admit(exchange, target);
        decided.set(request, { exchange, admitted: decision.ok ? decision.admitted : undefined });
        if (!decision.ok) return sendError(reply, decision.error);
      };
    },
    async handle(request, reply, target, work) {
      handled.add(request);
      const early = decided.get(request);
      const outcome =
        early?.admitted !== undefined
          ? await lifecycle.runAdmitted(early.exchange, early.admitted, work)
          : await lifecycle.run(fastifyExchange(request, reply), target, work);
      // Already answered by someone else (a forced drain's 503): nothing more may be written.
      if (reply.sent || reply.raw.headersSent) return undefined;
      if (outcome.ok) {
        void reply.header('server-timing', serverTiming(outcome.timings, outcome.totalMs));
        return outcome.value;
      }
      sendError(reply, outcome.error);
      return undefined;
    },
    async onRequestAbort(request) {
      const early = decided.get(request);
      if (handled.has(request) || (early !== undefined && early.admitted === undefined)) return;
      const { name } = request.params as { name?: unknown };
      lifecycle.abandoned(typeof name === 'string' ? name : '', request.log);
    },
  };
}
