import type { ModelRegistry } from '../core/registry.js';
import type { ServedPipeline } from '../tasks/index.js';
import { emptyTimings, type Timings } from '../core/telemetry.js';
import { OcularError, modelNotFound, type ErrorCode } from '../errors.js';
import type { Admission, Answered } from '../plugins/admission.js';
import { toOcularError } from '../plugins/errors.js';
import { UNKNOWN_MODEL, type DropReason, type Metrics } from '../plugins/metrics.js';
import type { ServerSpan } from '../plugins/tracing.js';

/**
 * The one lifecycle of an inference request, whatever its protocol (/v1 predict, /v2 infer, later gRPC): the
 * lease on the model version it runs on, admission, the client's abort signal, stage timings and Server-Timing,
 * the request metric and drop accounting. The protocol supplies only its work (parse, run, build the answer) and
 * writes what comes back: the answer, or the error to send in its own format. Framework-free: a transport hands
 * it an Exchange (see fastify-lifecycle.ts for HTTP).
 *
 *   headers: lookup (404) -> acquire (lease; 503 not ready / draining) -> admit (503 QUEUE_FULL)     [admit]
 *   body read (by the transport, only once admitted) -> work                                      [runAdmitted]
 *     -> answer: 200 observed, Server-Timing        | error: drop counted, observed, logged, returned to send
 *   ... the lease and the admission slot end when the exchange's answer is written or its connection is gone.
 */

/** Error codes that are drops (work given up before an answer), by their drop metric's reason. */
export const DROP_REASONS: Partial<Record<ErrorCode, DropReason>> = {
  CLIENT_CLOSED_REQUEST: 'client_closed',
  QUEUE_TIMEOUT: 'timeout',
  QUEUE_FULL: 'queue_full',
};

/** The logger of one request (pino's child logger over HTTP). */
export interface RequestLog {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** What a transport gives the lifecycle for one request. */
export interface Exchange {
  /** Fires when the client goes away before its answer is written. */
  readonly signal: AbortSignal;
  /** Emits 'close' once the answer is written or the connection is gone: the lease and admission end then. */
  readonly answered: Answered;
  readonly log: RequestLog;
  /** The request's server span where it is traced (plugins/tracing.ts: Tracing.startServerSpan). */
  readonly trace?: ServerSpan | undefined;
}

/** The model a request asks for: by name, and at a version when the protocol names one. */
export interface Target {
  name: string;
  version?: string | undefined;
}

export type ServedModel = ReturnType<ModelRegistry<ServedPipeline>['acquire']>;

/** What the protocol's work gets: the leased model, the client's signal, the timings to fill in. */
export interface WorkContext {
  model: ServedModel;
  signal: AbortSignal;
  timings: Timings;
  /**
   * Admits `count` more images of this request (admitted as one before its work began), or throws QUEUE_FULL: a
   * request of n images counts n against the model's bound, as n requests of one would.
   */
  admit(count: number): void;
}

export type Outcome<T> =
  | { ok: true; value: T; timings: Timings; totalMs: number }
  | { ok: false; error: OcularError };

export interface LifecycleOptions {
  models: ModelRegistry<ServedPipeline>;
  metrics: Pick<Metrics, 'observeRequest' | 'dropRequest'>;
  /** Shared by every protocol of one registry: they share each model's queue and workers. */
  admission: Admission;
}

/** A request admitted before its body is read: its lease and admission slot, held until its answer. */
export interface Admitted {
  readonly model: ServedModel;
  readonly target: Target;
}

export type Decision = { ok: true; admitted: Admitted } | { ok: false; error: OcularError };

export interface RequestLifecycle {
  /**
   * Decides a request from its target alone, before its body is read: lookup (404), lease (503 not ready or
   * draining), admission (503 QUEUE_FULL). A refusal comes back counted and logged, for the transport to send; an
   * admission holds the lease and the slot until `exchange.answered` closes.
   */
  admit(exchange: Exchange, target: Target): Decision;
  /** Runs the work of a request `admit` let in: never throws; an error comes back counted and logged. */
  runAdmitted<T>(exchange: Exchange, admitted: Admitted, work: (ctx: WorkContext) => Promise<T>): Promise<Outcome<T>>;
  /** admit, then runAdmitted: for a transport that has the whole request at once. */
  run<T>(exchange: Exchange, target: Target, work: (ctx: WorkContext) => Promise<T>): Promise<Outcome<T>>;
  /** A request given up before its work began (its client left mid-upload): counted as a drop. */
  abandoned(name: string, log: RequestLog): void;
}

export function serverTiming(t: Timings, totalMs: number): string {
  const f = (v: number) => v.toFixed(2);
  return `preprocess;dur=${f(t.preprocessMs)}, queue;dur=${f(t.queueMs)}, inference;dur=${f(t.inferenceMs)}, postprocess;dur=${f(t.postprocessMs)}, total;dur=${f(totalMs)}`;
}

export function createRequestLifecycle({ models, metrics, admission }: LifecycleOptions): RequestLifecycle {
  const labelOf = (name: string) => (models.has(name) ? name : UNKNOWN_MODEL);

  /** The version asked for, when one is, must be the one served (checked before and after acquiring). */
  const checkVersion = ({ name, version }: Target, served: string | undefined): void => {
    if (version === undefined) return;
    if (served === undefined) throw modelNotFound(name, models.list().map((m) => m.name));
    if (version !== served) {
      throw new OcularError('MODEL_NOT_FOUND', `model "${name.slice(0, 64)}" has no version "${version.slice(0, 64)}" (serving ${served})`);
    }
  };

  /** Counts, logs and returns a failure; `started` is when the request's measured time began. */
  const fail = (error: unknown, exchange: Exchange, label: string, started: number, timings?: Timings): OcularError => {
    const { signal, log } = exchange;
    // Whatever failed after the client left (a body stream cut mid-upload, a batch), it is a drop.
    const err = signal.aborted ? new OcularError('CLIENT_CLOSED_REQUEST', undefined, { cause: error }) : toOcularError(error);
    const drop = DROP_REASONS[err.code];
    if (drop !== undefined && label !== UNKNOWN_MODEL) metrics.dropRequest(label, drop);
    exchange.trace?.refused(err, drop);
    metrics.observeRequest(label, err.status, err.code, (performance.now() - started) / 1000, timings);
    if (err.code === 'CLIENT_CLOSED_REQUEST') log.info({ model: label }, 'client went away, request dropped');
    else if (err.status >= 500) log.error({ err: error, code: err.code }, 'inference failed');
    else log.info({ code: err.code, msg: err.message }, 'request refused');
    return err;
  };

  const lifecycle: RequestLifecycle = {
    admit(exchange, target) {
      const started = performance.now();
      try {
        checkVersion(target, models.get(target.name)?.version);
        const model = models.acquire(target.name);
        // The lease on this version ends with the answer (written, or the connection gone): see ModelRegistry.
        exchange.answered.once('close', () => models.release(model));
        // A reload may have swapped the version between the lookup and the lease.
        checkVersion(target, model.version);
        exchange.trace?.model(model.name, model.version);
        // Refused past the model's bound before the body is read or parsed, or any image decoded (admission.ts).
        admission.admit(model, exchange.answered);
        return { ok: true, admitted: { model, target } };
      } catch (error) {
        return { ok: false, error: fail(error, exchange, labelOf(target.name), started) };
      }
    },

    async runAdmitted(exchange, { model, target }, work) {
      // Measured from here: the upload before it is the client's time, not the server's.
      const started = performance.now();
      const { signal } = exchange;
      const timings = emptyTimings();
      if (exchange.trace !== undefined) timings.trace = exchange.trace;
      const label = labelOf(target.name);
      try {
        const value = await work({ model, signal, timings, admit: (count) => admission.admit(model, exchange.answered, count) });
        // The client left while its batch ran (work that could not be skipped): nobody to answer, count the drop.
        if (signal.aborted) throw new OcularError('CLIENT_CLOSED_REQUEST');
        metrics.observeRequest(label, 200, '', (performance.now() - started) / 1000, timings);
        return { ok: true, value, timings, totalMs: performance.now() - started };
      } catch (error) {
        return { ok: false, error: fail(error, exchange, label, started, timings) };
      }
    },

    async run(exchange, target, work) {
      const decision = lifecycle.admit(exchange, target);
      if (!decision.ok) return decision;
      return lifecycle.runAdmitted(exchange, decision.admitted, work);
    },

    abandoned(name, log) {
      const label = labelOf(name);
      if (label !== UNKNOWN_MODEL) metrics.dropRequest(label, 'client_closed');
      metrics.observeRequest(label, 499, 'CLIENT_CLOSED_REQUEST', 0, undefined);
      log.info({ model: label }, 'client went away during upload, request dropped');
    },
  };
  return lifecycle;
}
