import { randomUUID } from 'node:crypto';
import cors from '@fastify/cors';
import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import { OCULAR_VERSION, maxConnectionsOf, parseThreadsOf, postprocessThreadsOf, tracingOf, type Config } from './config/config.js';
import type { LoadedManifest } from './config/manifest.js';
import type { BodyPool } from './core/body-pool.js';
import type { ModelRegistry } from './core/registry.js';
import type { PreprocessPool } from './core/preprocess/process-pool.js';
import { inferParserPlugin } from './protocols/oip/parser-plugin.js';
import { loadKeyDigests, registerAuth } from './plugins/auth.js';
import { answerClientError, answerFrameworkError, registerErrorHandling, trackPendingResponses } from './plugins/errors.js';
import { registerInFlight } from './plugins/in-flight.js';
import { registerManifestWatch, reloadManifest } from './plugins/manifest-watch.js';
import { registerSecurityHeaders } from './plugins/security-headers.js';
import { createRequestLifecycle } from './http/lifecycle.js';
import { type Metrics, metricsPlugin } from './plugins/metrics.js';
import { admissionPlugin } from './plugins/admission.js';
import { connectionsPlugin } from './plugins/connections.js';
import { modelsPlugin } from './plugins/models.js';
import { preprocessingPlugin } from './plugins/preprocessing.js';
import { postprocessingPlugin } from './plugins/postprocessing.js';
import { rawBodyPlugin } from './plugins/raw-body.js';
import { tracingPlugin, type ExporterFactory } from './plugins/tracing.js';
import { bodyBudgetPlugin } from './plugins/body-budget.js';
import { registerHealthRoutes } from './routes/health.js';
import { registerMetricsRoute } from './routes/metrics.js';
import { registerModelRoutes } from './routes/models.js';
import { registerPlaygroundRoutes } from './routes/playground.js';
import { registerPredictRoute } from './routes/predict.js';
import { registerV2Routes } from './protocols/oip/rest.js';
import { registerGrpc } from './protocols/grpc/register.js';
import { registerWriteTimeout } from './http/write-timeout.js';
import { createTaskPipeline, type ServedPipeline } from './tasks/index.js';

/**
 * Builds the Fastify app; never listens (main.ts does). Its resources are plugins (src/plugins/, and the v2
 * parser's in protocols/oip/), each decorating the app with what it owns and closing it in its own onClose:
 * models are loaded by `app.ocular.models.loadAll()` (main calls it after listening, so liveness answers
 * meanwhile), and closing the app drains and releases every model, then what the models used.
 */

export interface Ocular {
  models: ModelRegistry<ServedPipeline>;
  metrics: Metrics;
  /** Re-reads the manifest and applies it without downtime (SIGHUP, file change); logs, never throws. */
  reload(trigger: string): Promise<void>;
  /** Buffers for raw image bodies (plugins/raw-body.ts). */
  bodyPool: BodyPool;
  /**
   * Starts the preprocessing processes the config asks for (`auto` is resolved from the loaded models' providers),
   * once, after the models are loaded; resolves with their number once they are ready. Until then, and with none,
   * images are prepared in this process.
   */
  startPreprocessing(): Promise<number>;
  /** The preprocessing processes, once started with at least one. */
  readonly preprocess: PreprocessPool | undefined;
}

declare module 'fastify' {
  interface FastifyInstance {
    ocular: Ocular;
  }
}

export interface BuildOptions {
  config: Config;
  manifest: LoadedManifest;
  logger: Logger;
  /** A fatal device error at run time; main exits non-zero. */
  onFatal?: (err: Error) => void;
  /** Makes the OTLP trace exporter where tracing is on (default: plugins/tracing.ts's, of the configured protocol). */
  createTraceExporter?: ExporterFactory;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export async function buildApp({ config, manifest, logger, onFatal, createTraceExporter }: BuildOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: logger,
    bodyLimit: config.bodyLimitBytes,
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // Slow clients must not hold a connection for ever: headers within one limit, the whole request (headers and
    // body) within another. Node checks them every connectionsCheckingInterval, so that is kept well under both.
    requestTimeout: config.httpRequestTimeoutMs,
    http: {
      headersTimeout: Math.min(config.httpHeadersTimeoutMs, config.httpRequestTimeoutMs),
      connectionsCheckingInterval: Math.max(100, Math.min(2_000, Math.floor(Math.min(config.httpHeadersTimeoutMs, config.httpRequestTimeoutMs) / 4))),
    },
    // No socket inactivity timeout while a request is in progress (inference may be silent for long); idle
    // connections are closed after the keep-alive timeout (plugins/connections.ts), which a proxy in front must
    // exceed its own idle timeout by (docs/DEPLOYMENT.md, "Connections, proxies and probes").
    connectionTimeout: 0,
    keepAliveTimeout: config.keepAliveTimeoutMs,
    // While closing, requests on open keep-alive connections still reach the routes, which answer in the catalog's
    // format (predictions 503 DRAINING with Retry-After, /readyz 503); Fastify adds `Connection: close`.
    return503OnClosing: false,
    // Errors Fastify raises before routing (an undecodable URL, a path parameter over maxParamLength) and Node's
    // own answers to a connection (400, 408, 431) go through the one error path too (plugins/errors.ts).
    frameworkErrors: answerFrameworkError,
    clientErrorHandler: (error, socket) => answerClientError(error, socket, logger),
  }) as unknown as FastifyInstance;

  // Pipelined requests before a malformed one are answered before its 400 (answerClientError).
  trackPendingResponses(app.server);

  // Fastify runs onClose hooks in reverse order of registration: the registry, registered after what it uses,
  // drains first; then the parser and the preprocessing processes close; the metrics last.
  app.removeAllContentTypeParsers();
  await app.register(metricsPlugin);
  // Closed after the models drained (their last batches' spans ended), flushing what is buffered.
  await app.register(tracingPlugin, { config: tracingOf(config), version: OCULAR_VERSION, logger, createExporter: createTraceExporter });
  await app.register(connectionsPlugin, { maxConnections: maxConnectionsOf(config), keepAliveTimeoutMs: config.keepAliveTimeoutMs });
  // Images as raw bytes, in pooled buffers, whatever the Content-Type says or whether there is one (curl's
  // --data-binary sends application/x-www-form-urlencoded, Python's requests none): the format is sniffed from the
  // bytes, never trusted from the header, and bytes that are no accepted image are 415. Multipart below; /v2 has
  // parsers of its own.
  await app.register(rawBodyPlugin, { types: ['*'], bodyLimit: config.bodyLimitBytes, bodyLimitOption: 'OCULAR_BODY_LIMIT_BYTES' });
  await app.register(preprocessingPlugin, { config, logger });
  await app.register(inferParserPlugin, {
    threads: parseThreadsOf(config),
    queueSize: config.parseQueueSize,
    timeoutMs: config.parseTimeoutMs,
  });
  await app.register(postprocessingPlugin, { threads: postprocessThreadsOf(config) });
  const createPipeline = createTaskPipeline({ masks: app.postprocessing.masks, maxResponseBytes: config.maxResponseBytes });
  await app.register(modelsPlugin, { manifest, config, logger, onFatal, createPipeline });
  await app.register(admissionPlugin);
  const { models, metrics } = app;
  app.decorate('ocular', {
    models,
    metrics,
    reload: (trigger: string) => reloadManifest(models, logger, trigger),
    bodyPool: app.bodyPool,
    startPreprocessing: () => app.preprocessing.start(models.list().flatMap((m) => m.stages.map((s) => s.pool.info.provider))),
    get preprocess() {
      return app.preprocessing.pool;
    },
  });

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  registerErrorHandling(app);
  registerSecurityHeaders(app);
  registerInFlight(app, models);
  // Admin keys last: a key in both files is an admin key.
  const keyDigests = [
    ...(config.authKeysFile !== undefined ? await loadKeyDigests(config.authKeysFile) : []),
    ...(config.authAdminKeysFile !== undefined ? await loadKeyDigests(config.authAdminKeysFile, true) : []),
  ];
  registerAuth(app, {
    keyDigests,
    protectProbes: config.authProbes,
    protectMetrics: config.authMetrics,
  });
  // After auth (401 first) and before any body is read: the cap on request bytes in flight across requests.
  await app.register(bodyBudgetPlugin, { limitBytes: config.maxInflightBodyBytes });

  app.addHook('onSend', async (request, reply) => {
    void reply.header('x-request-id', request.id);
  });
  registerWriteTimeout(app, config.responseWriteTimeoutMs);

  await app.register(multipart, {
    limits: {
      fileSize: config.bodyLimitBytes,
      files: config.maxFiles,
      fields: 32,
      fieldSize: 64 * 1024,
      parts: config.maxFiles + 32,
      headerPairs: 64,
    },
    throwFileSizeLimit: true,
  });

  if (config.corsOrigins.length > 0) {
    await app.register(cors, { origin: config.corsOrigins, exposedHeaders: ['server-timing', 'x-request-id', 'retry-after', 'ocular-mask-labels', 'ocular-mask-void', 'traceresponse'] });
  }

  await app.register(swagger, {
    openapi: {
      info: { title: 'Ocular', description: 'Inference server for computer-vision ONNX models', version: OCULAR_VERSION },
    },
    transform: jsonSchemaTransform,
  });

  registerHealthRoutes(app, models);
  registerMetricsRoute(app, metrics);
  registerModelRoutes(app, models);
  // One lifecycle, one admission bound per model, for both inference APIs (they share each model's queue).
  const lifecycle = createRequestLifecycle({ models, metrics, admission: app.admission });
  registerPredictRoute(app, { lifecycle, maxFiles: config.maxFiles, bodyLimitBytes: config.bodyLimitBytes, maxResponseBytes: config.maxResponseBytes });
  await registerV2Routes(app, {
    models,
    parser: app.inferParser,
    lifecycle,
    tensorBodyLimitBytes: config.tensorBodyLimitBytes,
    maxResponseBytes: config.maxResponseBytes,
    serverVersion: OCULAR_VERSION,
    modelControl: config.modelControl,
    authEnabled: keyDigests.length > 0,
  });
  // The same protocol over gRPC, on its own port (main.ts listens when OCULAR_GRPC_PORT is set; tests on port 0).
  registerGrpc(app, {
    models,
    lifecycle,
    bodyBudget: app.bodyBudget,
    logger,
    serverVersion: OCULAR_VERSION,
    maxReceiveBytes: config.tensorBodyLimitBytes,
    maxResponseBytes: config.maxResponseBytes,
    keyDigests,
    protectProbes: config.authProbes,
    maxConnections: maxConnectionsOf(config),
    idleTimeoutMs: config.keepAliveTimeoutMs,
    tls: config.grpcTlsCertFile !== undefined && config.grpcTlsKeyFile !== undefined ? { certFile: config.grpcTlsCertFile, keyFile: config.grpcTlsKeyFile } : undefined,
    closeGraceMs: Math.max(1000, config.shutdownGraceMs - 2000),
    tracing: app.tracing,
  });
  registerManifestWatch(app, models, { intervalMs: config.manifestWatchMs, logger });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  if (config.playground) registerPlaygroundRoutes(app);

  return app;
}
