import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Server as NetServer } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatus } from 'grpc-health-check';
import type { Logger } from 'pino';
import type { ModelRegistry } from '../../core/registry.js';
import { OcularError } from '../../errors.js';
import { serverTiming, type Exchange, type RequestLifecycle } from '../../http/lifecycle.js';
import { matchKey, type KeyDigest } from '../../plugins/auth.js';
import type { BodyBudget } from '../../plugins/body-budget.js';
import type { Tracing } from '../../plugins/tracing.js';
import { toOcularError } from '../../plugins/errors.js';
import { throwIfAborted } from '../../tasks/pipeline.js';
import { recordStage } from '../../core/tracing.js';
import type { ServedPipeline } from '../../tasks/index.js';
import { EXTENSIONS, boundsOf, configOf, infer, lookupModel, metadataOf } from '../oip/model.js';
import { answerBytes, inferResponseOf, parseGrpcInferRequest, type GrpcInferRequest } from './messages.js';
import { loadInferenceProto } from './proto.js';
import { grpcStatusOf } from './status.js';

/**
 * The Open Inference Protocol over gRPC (inference.proto): one more transport of the request lifecycle
 * (http/lifecycle.ts), beside REST. ModelInfer takes the same path as POST /v2/models/{m}/infer: lookup, lease and
 * admission (lifecycle.run), the in-flight byte budget, the model's bounds checked against the input headers before
 * any element is made, the model view (oip/model.ts: infer), the response size limit; the same metrics, drops and
 * error catalog (status.ts maps it to gRPC codes). A client's cancellation or expired deadline aborts the request's
 * signal, so its queued work is skipped by the batcher as a departed HTTP client's is.
 *
 * Beside it: grpc.health.v1.Health (SERVING while the registry is ready; NOT_SERVING while loading or draining),
 * and server reflection. API keys, when on, are checked for every call by an interceptor (metadata
 * `authorization: Bearer <key>` or `x-api-key`), except health, ServerLive and ServerReady unless probes are
 * protected (OCULAR_AUTH_PROBES), as over HTTP.
 *
 * Connections: a listener of our own (node:net, capped by maxConnections) hands each socket to grpc-js through a
 * connection injector; keepalive pings find dead peers; idle connections close after the HTTP keep-alive timeout.
 * Messages are capped at the tensor body limit on receipt (grpc-js refuses a larger one RESOURCE_EXHAUSTED before
 * decoding it). Shutdown: `drain()` turns health NOT_SERVING (new inference is refused by the draining registry);
 * `close(graceMs)` stops accepting, waits for calls in progress (tryShutdown) up to graceMs, then forceShutdown;
 * `answerAll()` answers the calls still open UNAVAILABLE DRAINING for a forced exit.
 */

export interface GrpcTransportOptions {
  models: ModelRegistry<ServedPipeline>;
  lifecycle: RequestLifecycle;
  bodyBudget: Pick<BodyBudget, 'reserve'>;
  logger: Logger;
  serverVersion: string;
  /** Largest message received (OCULAR_TENSOR_BODY_LIMIT_BYTES, as a REST inference body). */
  maxReceiveBytes: number;
  /** Largest answer's tensors (OCULAR_MAX_RESPONSE_BYTES), checked before the answer is built. */
  maxResponseBytes: number;
  keyDigests: readonly KeyDigest[];
  protectProbes: boolean;
  maxConnections: number;
  /** Connections without calls are closed after this long. */
  idleTimeoutMs: number;
  tls?: { certFile: string; keyFile: string } | undefined;
  /** Traces (plugins/tracing.ts): a server span per ModelInfer call, its traceparent from the call's metadata. */
  tracing?: Pick<Tracing, 'startServerSpan'> | undefined;
}

export interface GrpcTransport {
  /** Listens on host:port (0: any free port) and resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  /** Health answers NOT_SERVING from now on. */
  drain(): void;
  /**
   * Health follows the registry's readiness now, not at its next poll (every HEALTH_POLL_MS): main.ts calls it once
   * the models are loaded, before it logs `ready`, so that nothing reads NOT_SERVING after the ready line.
   */
  syncHealth(): void;
  /** Stops accepting, lets calls in progress finish for up to graceMs (tryShutdown), then forceShutdown. */
  close(graceMs: number): Promise<void>;
  /** Answers every call still open UNAVAILABLE DRAINING (forced shutdown); resolves with their number. */
  answerAll(): number;
  /** Calls received and not yet answered. */
  readonly open: number;
}

const SERVICE = 'inference.GRPCInferenceService';
const OPEN_METHODS = new Set(['/grpc.health.v1.Health/Check', '/grpc.health.v1.Health/Watch', `/${SERVICE}/ServerLive`, `/${SERVICE}/ServerReady`]);

/** How often health follows the registry's readiness (models loading, unloaded, reloaded). */
const HEALTH_POLL_MS = 500;

/** The key a call's metadata presents (`authorization: Bearer <key>`, else `x-api-key`), as over HTTP. */
function presentedKey(metadata: grpc.Metadata): string | undefined {
  const authorization = metadata.get('authorization')[0];
  if (typeof authorization === 'string') {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
    if (m !== null) return m[1];
  }
  const apiKey = metadata.get('x-api-key')[0];
  return typeof apiKey === 'string' && apiKey.length > 0 ? apiKey.trim() : undefined;
}

/** Bytes a decoded request holds (its tensors' contents), reserved in the in-flight byte budget. */
function requestBytes(req: GrpcInferRequest): number {
  let n = 0;
  for (const b of req.raw_input_contents) n += b.length;
  for (const input of req.inputs) {
    for (const values of Object.values(input.contents ?? {}) as unknown[][]) {
      if (!Array.isArray(values)) continue;
      for (const v of values) n += Buffer.isBuffer(v) ? v.length + 4 : 8;
    }
  }
  return n;
}

export function createGrpcTransport(opts: GrpcTransportOptions): GrpcTransport {
  const { models, lifecycle, logger } = opts;
  const log = logger.child({ transport: 'grpc' });
  const { packageDefinition, service } = loadInferenceProto();

  const interceptors: grpc.ServerInterceptor[] = [];
  if (opts.keyDigests.length > 0) {
    interceptors.push(
      (method, call) =>
        new grpc.ServerInterceptingCall(call, {
          start(next) {
            next({
              onReceiveMetadata(metadata, pass) {
                if (!opts.protectProbes && OPEN_METHODS.has(method.path)) return pass(metadata);
                if (matchKey(presentedKey(metadata), opts.keyDigests) !== null) return pass(metadata);
                log.info({ code: 'UNAUTHORIZED', method: method.path }, 'request refused');
                call.sendStatus(grpcStatusOf(new OcularError('UNAUTHORIZED')) as grpc.StatusObject);
              },
            });
          },
        }),
    );
  }

  const server = new grpc.Server({
    interceptors,
    'grpc.max_receive_message_length': opts.maxReceiveBytes,
    // The answer's tensors are bounded before it is built (RESOURCE_EXHAUSTED); room for its other fields.
    'grpc.max_send_message_length': opts.maxResponseBytes + 1024 * 1024,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.max_connection_idle_ms': opts.idleTimeoutMs,
    'grpc.max_concurrent_streams': 1024,
  });

  // ---- health ------------------------------------------------------------------------------------------------
  const health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE]: 'NOT_SERVING' });
  let draining = false;
  let shown: ServingStatus | undefined;
  const refreshHealth = (): void => {
    const status: ServingStatus = !draining && models.ready ? 'SERVING' : 'NOT_SERVING';
    if (status === shown) return;
    shown = status;
    health.setStatus('', status);
    health.setStatus(SERVICE, status);
  };
  refreshHealth();
  let healthTimer: NodeJS.Timeout | undefined;
  health.addToServer(server);
  // Reflection describes both services: ours and health (grpc-health-check's own health.proto).
  new ReflectionService({ ...packageDefinition, ...protoLoader.loadSync(healthProtoPath) }).addToServer(server);

  // ---- calls -------------------------------------------------------------------------------------------------
  /** Calls not yet answered, with the way to answer each (answerAll). */
  const open = new Map<object, (err: OcularError) => void>();

  type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => void;
  /** A unary handler answering what `run` returns, or its error mapped through the catalog. */
  function unary<Req, Res>(run: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>): Unary<Req, Res> {
    return (call, callback) => {
      Promise.resolve()
        .then(() => run(call.request, call))
        .then(
          (value) => callback(null, value),
          (error: unknown) => callback(grpcStatusOf(toOcularError(error)) as grpc.ServiceError),
        );
    };
  }

  const version = (v: string): string | undefined => (v === '' ? undefined : v);

  const modelInfer: Unary<GrpcInferRequest, unknown> = (call, callback) => {
    const answered = new EventEmitter();
    const controller = new AbortController();
    // The call's server span (W3C traceparent/tracestate from its metadata), ended with its gRPC status; its
    // traceresponse goes back in the initial metadata, as REST's in a header.
    const span = opts.tracing?.startServerSpan({ transport: 'grpc', name: 'inference.GRPCInferenceService/ModelInfer', carrier: call.metadata.getMap() });
    if (span !== undefined) {
      const initial = new grpc.Metadata();
      initial.set('traceresponse', span.traceresponse);
      call.sendMetadata(initial);
    }
    const req = call.request;
    const started = performance.now();
    const callLog = log.child({ method: 'ModelInfer', model: req.model_name.slice(0, 64), ...span?.logFields });
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      open.delete(call);
      answered.emit('close');
    };
    // A cancelled call (the client's cancel, its deadline, its connection gone) aborts the work: queued, it is skipped.
    call.once('cancelled', () => {
      controller.abort();
      span?.end(grpc.status.CANCELLED);
      finish();
    });
    const answer = (err: OcularError | null, value?: unknown, trailer?: grpc.Metadata): void => {
      if (done) return;
      // The lifecycle recorded a refusal's why on the span (Exchange.trace); the status code is the transport's.
      const status = err !== null ? grpcStatusOf(err) : undefined;
      const code = status?.code ?? grpc.status.OK;
      span?.end(code);
      // One line per call, as Fastify's "request completed" for HTTP.
      callLog.info({ grpcStatus: code, responseTime: Math.round((performance.now() - started) * 10) / 10 }, 'request completed');
      if (status !== undefined) callback(status as grpc.ServiceError);
      else callback(null, value, trailer);
      finish();
    };
    open.set(call, (err) => answer(err));
    const exchange: Exchange = {
      signal: controller.signal,
      answered,
      log: callLog,
      ...(span !== undefined && { trace: span }),
    };
    void lifecycle
      .run(exchange, { name: req.model_name, version: version(req.model_version) }, async ({ model, signal, timings, admit }) => {
        // The message arrived whole: its bytes count against the in-flight budget until the answer is sent.
        opts.bodyBudget.reserve(requestBytes(req), answered);
        const t = performance.now();
        // The model's bounds against the input headers, before any element is made.
        const parsed = parseGrpcInferRequest(req, boundsOf(model));
        recordStage(timings, 'preprocess', t);
        const result = await infer(model, parsed, {
          signal,
          timings,
          limits: models.limits,
          prepare: models.prepare,
          admit,
          maxResponseBytes: opts.maxResponseBytes,
        });
        throwIfAborted(signal);
        const post = performance.now();
        const bytes = answerBytes(result.outputs);
        if (bytes > opts.maxResponseBytes) {
          throw new OcularError('RESPONSE_TOO_LARGE', `the answer's tensors take ${bytes} bytes, over the limit of ${opts.maxResponseBytes} bytes (OCULAR_MAX_RESPONSE_BYTES)`);
        }
        const response = inferResponseOf(model, parsed, result.outputs, result.outputParameters);
        recordStage(timings, 'postprocess', post);
        return response;
      })
      .then((outcome) => {
        if (!outcome.ok) return answer(outcome.error);
        const trailer = new grpc.Metadata();
        trailer.set('server-timing', serverTiming(outcome.timings, outcome.totalMs));
        answer(null, outcome.value, trailer);
      });
  };

  server.addService(service, {
    ServerLive: unary(() => ({ live: true })),
    ServerReady: unary(() => ({ ready: models.ready })),
    ModelReady: unary((req: { name: string; version: string }) => {
      const handle = lookupModel(models, req.name, version(req.version));
      return { ready: handle.state === 'READY' && !models.isDraining };
    }),
    ServerMetadata: unary(() => ({ name: 'ocular', version: opts.serverVersion, extensions: EXTENSIONS })),
    ModelMetadata: unary((req: { name: string; version: string }) => metadataOf(lookupModel(models, req.name, version(req.version)))),
    ModelConfig: unary((req: { name: string; version: string }) => ({ config: configOf(lookupModel(models, req.name, version(req.version))) })),
    ModelInfer: modelInfer,
  });

  let listener: NetServer | undefined;
  let injector: ReturnType<grpc.Server['createConnectionInjector']> | undefined;

  return {
    get open() {
      return open.size;
    },
    async listen(host, port) {
      const credentials =
        opts.tls !== undefined
          ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: readFileSync(opts.tls.certFile), private_key: readFileSync(opts.tls.keyFile) }], false)
          : grpc.ServerCredentials.createInsecure();
      const inject = server.createConnectionInjector(credentials);
      injector = inject;
      const net = createServer((socket) => inject.injectConnection(socket));
      // Past the cap Node closes each new connection as soon as it is accepted.
      net.maxConnections = opts.maxConnections;
      listener = net;
      await new Promise<void>((resolve, reject) => {
        net.once('error', reject);
        net.listen(port, host, () => {
          net.off('error', reject);
          resolve();
        });
      });
      refreshHealth();
      healthTimer = setInterval(refreshHealth, HEALTH_POLL_MS);
      healthTimer.unref();
      const address = net.address();
      const bound = typeof address === 'object' && address !== null ? address.port : port;
      log.info({ port: bound, tls: opts.tls !== undefined }, 'grpc listening');
      return bound;
    },
    drain() {
      draining = true;
      refreshHealth();
    },
    syncHealth() {
      refreshHealth();
    },
    async close(graceMs) {
      draining = true;
      refreshHealth();
      clearInterval(healthTimer);
      if (listener !== undefined) listener.close();
      const stopped = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), graceMs);
        timer.unref();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
      if (!stopped) {
        log.warn({ open: open.size, graceMs }, 'grpc calls still open at the end of the grace: closing them');
        server.forceShutdown();
      }
      injector?.destroy();
    },
    answerAll() {
      const answers = [...open.values()];
      for (const answer of answers) answer(new OcularError('DRAINING'));
      return answers.length;
    },
  };
}
