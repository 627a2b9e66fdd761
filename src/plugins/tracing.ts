import type { IncomingMessage } from 'node:http';
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type SpanContext,
  type TextMapGetter,
  type TextMapPropagator,
  type Tracer,
} from '@opentelemetry/api';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
  ATTR_URL_PATH,
} from '@opentelemetry/semantic-conventions';
import fp from 'fastify-plugin';
import type { Logger } from 'pino';
import type { TracingConfig } from '../config/config.js';
import type { RunResult } from '../core/run-result.js';
import type { BatchTracer, RequestTrace, TracedStage } from '../core/tracing.js';
import { OcularError } from '../errors.js';

/**
 * OpenTelemetry traces (docs/OBSERVABILITY.md, "Traces"). Off unless the config turns them on (config.ts:
 * tracingOf); off, nothing of the SDK or an exporter is loaded or created, no hook is added, and every request's
 * `traceSpan` stays null: the cost is one null check per stage.
 *
 * On: one SERVER span per inference request, whatever its transport (`Tracing.startServerSpan`, the one hook a
 * transport calls with the request's headers or metadata), continuing the caller's W3C trace context
 * (traceparent, tracestate); under it a span per stage, `preprocess`, `queue`, `inference`, `postprocess`, recorded
 * from the times the request measures anyway (core/tracing.ts); each batch a stage runs from its queue is one
 * `batch` span (a root: it serves several requests, of several traces), which each request's `inference` span links
 * to. Attributes name the model, its version, the provider, sizes, status and error codes: never a request's
 * bytes, tensor values, keys or another request's identifiers.
 *
 * The provider is this plugin's own (never registered as the global one: two apps in one process, as in tests, keep
 * their traces apart), and it is shut down, its batch processor flushed, on close, after the models drained.
 */

/** Log fields of a traced request, as OpenTelemetry's log data model names them. */
export interface TraceLogFields {
  trace_id: string;
  span_id: string;
  trace_flags: string;
}

/** One request's server span: what a transport holds for it from its first byte to its answer. */
export interface ServerSpan extends RequestTrace {
  /** For every log line of the request (a child logger's bindings). */
  readonly logFields: TraceLogFields;
  /**
   * The W3C Trace Context Level 2 `traceresponse` value to answer with: version, trace id, this server span's id,
   * flags (sampled or not), so a caller that sent no traceparent can still find this trace.
   */
  readonly traceresponse: string;
  /** The route (HTTP: Fastify's pattern) once known: the span is named after it, with its request id. */
  route(name: string, attributes?: Attributes): void;
  /** The model version the request was leased. */
  model(name: string, version: string): void;
  /** Why the request was refused or dropped: the span's status is ERROR, with the error's code (and drop reason). */
  refused(err: OcularError, dropReason?: string): void;
  /** Ends the span with the transport's status (HTTP status code, gRPC status); the first call counts. */
  end(status: number): void;
}

export interface ServerSpanOptions {
  /** 'http' (REST /v1 and /v2) or 'grpc'; names the status attribute end() sets. */
  transport: 'http' | 'grpc';
  /** The span's name until route() renames it: HTTP `METHOD /path`, gRPC the full method name. */
  name: string;
  /** The request's headers (HTTP) or metadata (gRPC `metadata.getMap()`): lower-case keys, traceparent read from them. */
  carrier: Readonly<Record<string, unknown>>;
  attributes?: Attributes;
}

export interface Tracing {
  readonly enabled: boolean;
  /** Starts a request's server span (undefined when tracing is off). */
  startServerSpan(opts: ServerSpanOptions): ServerSpan | undefined;
  /** One span per batch, for the stages (undefined when tracing is off). */
  readonly batches: BatchTracer | undefined;
  /** Exports what is buffered and stops: called once, on close. */
  shutdown(): Promise<void>;
}

export const TRACING_OFF: Tracing = {
  enabled: false,
  startServerSpan: () => undefined,
  batches: undefined,
  shutdown: async () => {},
};

/** Makes the exporter (tests give their own, to count or to wrap). */
export type ExporterFactory = (config: TracingConfig) => Promise<SpanExporter>;

/** The OTLP exporter of the configured protocol; it reads the other OTEL_EXPORTER_OTLP_* variables (headers, timeout). */
export const createOtlpExporter: ExporterFactory = async ({ protocol, url }) => {
  if (protocol === 'grpc') {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-grpc');
    return new OTLPTraceExporter({ url });
  }
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  return new OTLPTraceExporter({ url });
};

/** At most one warning a minute about failed exports: a collector that is down must not flood the logs. */
const EXPORT_WARN_INTERVAL_MS = 60_000;

/** The exporter, with failed exports logged (OpenTelemetry's own diagnostics are silent unless set up globally). */
function loggingExporter(inner: SpanExporter, logger: Logger): SpanExporter {
  let warnedAt = -Infinity;
  return {
    export(spans, done) {
      inner.export(spans, (result) => {
        if (result.error !== undefined || result.code !== 0) {
          const now = performance.now();
          if (now - warnedAt >= EXPORT_WARN_INTERVAL_MS) {
            warnedAt = now;
            logger.warn({ err: result.error, spans: spans.length }, 'trace export failed');
          }
        }
        done(result);
      });
    },
    shutdown: () => inner.shutdown(),
    ...(inner.forceFlush !== undefined && { forceFlush: () => (inner.forceFlush as () => Promise<void>)() }),
  };
}

/** Reads traceparent and tracestate from headers or gRPC metadata: strings only (a Buffer value is binary metadata). */
const carrierGetter: TextMapGetter<Readonly<Record<string, unknown>>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const v = carrier[key];
    if (typeof v === 'string') return v;
    if (Array.isArray(v) && v.every((x): x is string => typeof x === 'string')) return v;
    return undefined;
  },
};

/** performance.now() to the epoch milliseconds OpenTelemetry takes. */
const epochMs = (t: number): number => performance.timeOrigin + t;

function isSpanContext(v: unknown): v is SpanContext {
  return typeof v === 'object' && v !== null && typeof (v as SpanContext).traceId === 'string' && typeof (v as SpanContext).spanId === 'string';
}

class RequestSpan implements ServerSpan {
  readonly logFields: TraceLogFields;
  readonly traceresponse: string;
  private ctx: Context | undefined;
  private ended = false;

  constructor(
    private readonly tracer: Tracer,
    private readonly span: Span,
    private readonly transport: ServerSpanOptions['transport'],
  ) {
    const { traceId, spanId, traceFlags } = span.spanContext();
    const flags = (traceFlags & 0xff).toString(16).padStart(2, '0');
    this.logFields = { trace_id: traceId, span_id: spanId, trace_flags: flags };
    this.traceresponse = `00-${traceId}-${spanId}-${flags}`;
  }

  /** The context whose parent is this server span, for its children. */
  private parent(): Context {
    this.ctx ??= trace.setSpan(ROOT_CONTEXT, this.span);
    return this.ctx;
  }

  private child(name: string, startMs: number, endMs: number, attributes?: Attributes, links?: Link[]): void {
    if (!this.span.isRecording()) return;
    const s = this.tracer.startSpan(
      name,
      { kind: SpanKind.INTERNAL, startTime: epochMs(startMs), ...(attributes !== undefined && { attributes }), ...(links !== undefined && { links }) },
      this.parent(),
    );
    s.end(epochMs(endMs));
  }

  stage(name: TracedStage, startMs: number, endMs: number): void {
    this.child(name, startMs, endMs);
  }

  run(run: RunResult): void {
    const started = run.enqueuedAt + run.queueMs;
    this.child('queue', run.enqueuedAt, started);
    const links = isSpanContext(run.batch) ? [{ context: run.batch }] : undefined;
    this.child('inference', started, started + run.inferenceMs, { 'ocular.batch.size': run.batchSize }, links);
  }

  route(name: string, attributes?: Attributes): void {
    this.span.updateName(name);
    if (attributes !== undefined) this.span.setAttributes(attributes);
  }

  model(name: string, version: string): void {
    this.span.setAttributes({ 'ocular.model': name, 'ocular.model.version': version });
  }

  refused(err: OcularError, dropReason?: string): void {
    this.span.setAttributes({ [ATTR_ERROR_TYPE]: err.code, 'ocular.error.code': err.code, ...(dropReason !== undefined && { 'ocular.drop.reason': dropReason }) });
    this.span.setStatus({ code: SpanStatusCode.ERROR, message: err.code });
  }

  end(status: number): void {
    if (this.ended) return;
    this.ended = true;
    this.span.setAttribute(this.transport === 'grpc' ? 'rpc.grpc.status_code' : ATTR_HTTP_RESPONSE_STATUS_CODE, status);
    this.span.end(epochMs(performance.now()));
  }
}

/** A URL fit for a log line: no user, password or query (where a collector's token may sit). */
function withoutCredentials(url: string): string {
  const u = new URL(url);
  u.username = '';
  u.password = '';
  u.search = '';
  return u.toString();
}

export interface TracingOptions {
  version: string;
  logger: Logger;
  createExporter?: ExporterFactory | undefined;
}

/**
 * The tracing of an app: TRACING_OFF without a config, else an SDK tracer provider of its own with a batch span
 * processor (OTEL_BSP_* read by the SDK) in front of the OTLP exporter, sampled as OTEL_TRACES_SAMPLER says
 * (default: parent-based, always on), its resource named `ocular` unless OTEL_SERVICE_NAME or
 * OTEL_RESOURCE_ATTRIBUTES say otherwise. The SDK is loaded here, only when on.
 */
export async function createTracing(config: TracingConfig | undefined, opts: TracingOptions): Promise<Tracing> {
  if (config === undefined) return TRACING_OFF;
  const [{ NodeTracerProvider, BatchSpanProcessor }, { resourceFromAttributes, detectResources, envDetector }, { W3CTraceContextPropagator }] =
    await Promise.all([import('@opentelemetry/sdk-trace-node'), import('@opentelemetry/resources'), import('@opentelemetry/core')]);
  const exporter = loggingExporter(await (opts.createExporter ?? createOtlpExporter)(config), opts.logger);
  const resource = resourceFromAttributes({ [ATTR_SERVICE_NAME]: 'ocular', [ATTR_SERVICE_VERSION]: opts.version }).merge(
    detectResources({ detectors: [envDetector] }),
  );
  const provider = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(exporter)] });
  const tracer = provider.getTracer('ocular', opts.version);
  const propagator: TextMapPropagator = new W3CTraceContextPropagator();
  opts.logger.info({ protocol: config.protocol, url: withoutCredentials(config.url) }, 'tracing on: OTLP export');
  return {
    enabled: true,
    startServerSpan({ transport, name, carrier, attributes }) {
      const parent = propagator.extract(ROOT_CONTEXT, carrier, carrierGetter);
      const span = tracer.startSpan(
        name,
        // Started and ended on the clock the stage spans use (epochMs of performance.now()), so that a stage recorded
        // just before the answer never ends after its server span.
        { kind: SpanKind.SERVER, startTime: epochMs(performance.now()), attributes: { 'ocular.transport': transport, ...attributes } },
        parent,
      );
      return new RequestSpan(tracer, span, transport);
    },
    batches: {
      startBatch({ model, version, stage, provider: ep, size, kind }) {
        const span = tracer.startSpan('batch', {
          root: true,
          kind: SpanKind.INTERNAL,
          attributes: {
            'ocular.model': model,
            'ocular.model.version': version,
            'ocular.stage': stage,
            'ocular.provider': ep,
            'ocular.batch.size': size,
            'ocular.batch.kind': kind,
          },
        });
        return {
          link: span.spanContext(),
          end(error) {
            if (error !== undefined) {
              const code = typeof (error as { code?: unknown }).code === 'string' ? (error as { code: string }).code : 'INFERENCE_FAILED';
              span.setAttributes({ [ATTR_ERROR_TYPE]: code, 'ocular.error.code': code });
              span.setStatus({ code: SpanStatusCode.ERROR, message: code });
            }
            span.end();
          },
        };
      },
    },
    shutdown: () => provider.shutdown(),
  };
}

declare module 'fastify' {
  interface FastifyInstance {
    tracing: Tracing;
  }
  interface FastifyRequest {
    /** The request's server span, where tracing is on and the request is traced; null otherwise. */
    traceSpan: ServerSpan | null;
  }
}

/** Paths whose requests are traced: the model APIs of /v1 and /v2 (not probes, metrics, docs or the playground). */
export function isTracedPath(url: string | undefined): boolean {
  return url !== undefined && (url.startsWith('/v1/models/') || url.startsWith('/v2/models/'));
}

export interface TracingPluginOptions {
  config: TracingConfig | undefined;
  version: string;
  logger: Logger;
  createExporter?: ExporterFactory | undefined;
}

/**
 * Decorates the app with its Tracing and, where on, traces every request to a model API over HTTP: the span starts
 * when Fastify makes the request's logger (so every line of it, "incoming request" included, carries trace_id and
 * span_id), is named after the route in onRequest (which also sets the `traceresponse` header, kept on any answer),
 * and ends when the response is written or the connection is gone, with the status sent.
 */
export const tracingPlugin = fp<TracingPluginOptions>(
  async (app, { config, version, logger, createExporter }) => {
    const tracing = await createTracing(config, { version, logger, createExporter });
    app.decorate('tracing', tracing);
    app.decorateRequest('traceSpan', null);
    app.addHook('onClose', async () => tracing.shutdown());
    if (!tracing.enabled) return;

    // From the logger's creation to onRequest only: Fastify makes a request's logger before its request object.
    const started = new WeakMap<IncomingMessage, ServerSpan>();
    app.setChildLoggerFactory((parentLogger, bindings, childOpts, rawReq) => {
      const span = isTracedPath(rawReq.url)
        ? tracing.startServerSpan({
            transport: 'http',
            name: `${rawReq.method ?? 'HTTP'}`,
            carrier: rawReq.headers,
            attributes: { [ATTR_HTTP_REQUEST_METHOD]: rawReq.method ?? '', [ATTR_URL_PATH]: (rawReq.url ?? '').split('?', 1)[0] ?? '' },
          })
        : undefined;
      if (span === undefined) return parentLogger.child(bindings, childOpts);
      started.set(rawReq, span);
      return parentLogger.child({ ...bindings, ...span.logFields }, childOpts);
    });
    app.addHook('onRequest', async (request, reply) => {
      const span = started.get(request.raw);
      if (span === undefined) return;
      started.delete(request.raw);
      request.traceSpan = span;
      const route = request.routeOptions.url;
      span.route(`${request.method} ${route ?? ''}`.trim(), { ...(route !== undefined && { [ATTR_HTTP_ROUTE]: route }), 'ocular.request_id': request.id });
      void reply.header('traceresponse', span.traceresponse);
      reply.raw.once('close', () => {
        // Gone before its answer was written (a client that left mid-upload never reaches the lifecycle): a drop.
        if (reply.raw.writableFinished) return span.end(reply.raw.statusCode);
        const gone = new OcularError('CLIENT_CLOSED_REQUEST');
        span.refused(gone, 'client_closed');
        span.end(gone.status);
      });
    });
  },
  { name: 'ocular-tracing', fastify: '5.x' },
);
