import { randomUUID } from 'node:crypto';
import cors from '@fastify/cors';
import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import type { Config } from './config/config.js';
import type { LoadedManifest } from './config/manifest.js';
import { BodyPool } from './core/body-pool.js';
import { InferParser } from './core/infer-parser.js';
import { ModelRegistry } from './core/registry.js';
import { loadKeyDigests, registerAuth } from './plugins/auth.js';
import { registerErrorHandling } from './plugins/errors.js';
import { registerInFlight } from './plugins/in-flight.js';
import { registerManifestWatch, reloadManifest } from './plugins/manifest-watch.js';
import { SECURITY_HEADERS, registerSecurityHeaders } from './plugins/security-headers.js';
import { sendError } from './plugins/errors.js';
import { OcularError } from './errors.js';
import { Metrics } from './plugins/metrics.js';
import { registerHealthRoutes } from './routes/health.js';
import { registerMetricsRoute } from './routes/metrics.js';
import { registerModelRoutes } from './routes/models.js';
import { registerPlaygroundRoutes } from './routes/playground.js';
import { registerPredictRoute } from './routes/predict.js';
import { registerRawBodyParser } from './routes/raw-body.js';
import { registerV2Routes } from './routes/v2/index.js';
import { availableCpus } from './config/cpus.js';
import { prepareImage, type ImagePreparer } from './tasks/preprocess/image.js';
import { PreprocessPool, resolvePreprocessProcesses } from './tasks/preprocess/process-pool.js';

/**
 * Builds the Fastify app; never listens (main.ts does). The app owns the model registry and the metrics: models
 * are loaded by `app.ocular.models.loadAll()` (main calls it after listening, so liveness answers meanwhile), and
 * closing the app drains and releases every model.
 */

export interface Ocular {
  models: ModelRegistry;
  metrics: Metrics;
  /** Re-reads the manifest and applies it without downtime (SIGHUP, file change); logs, never throws. */
  reload(trigger: string): Promise<void>;
  /** Buffers for raw image bodies (routes/raw-body.ts). */
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
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export async function buildApp({ config, manifest, logger, onFatal }: BuildOptions): Promise<FastifyInstance> {
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
    connectionTimeout: 0,
    keepAliveTimeout: 65_000,
    // While closing, requests on open keep-alive connections still reach the routes, which answer in the catalog's
    // format (predictions 503 DRAINING with Retry-After, /readyz 503); Fastify adds `Connection: close`.
    return503OnClosing: false,
    // Errors Fastify raises before routing (an undecodable URL, a path parameter over maxParamLength) answer in
    // the catalog's format too, never Fastify's own (which echoes the URL and names FST_ codes).
    frameworkErrors: (error, _request, reply) => {
      const code = error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'INVALID_PARAMETER' : 'INVALID_REQUEST';
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) void reply.header(name, value);
      return sendError(reply, new OcularError(code));
    },
  }) as unknown as FastifyInstance;

  const metrics = new Metrics();
  let preprocess: PreprocessPool | undefined;
  let closed = false;
  const prepare: ImagePreparer = (bytes, spec, limits) =>
    preprocess !== undefined ? preprocess.prepare(bytes, spec, limits) : prepareImage(bytes, spec, limits);
  const models = new ModelRegistry({ manifest, config, logger, telemetry: metrics, onFatal, prepare });
  metrics.attach(models);
  const parser = new InferParser();
  const bodyPool = new BodyPool();
  const startPreprocessing = async (): Promise<number> => {
    if (preprocess !== undefined || closed) return preprocess?.size ?? 0;
    const providers = models.list().flatMap((m) => m.stages.map((s) => s.pool.info.provider));
    const processes = resolvePreprocessProcesses(config.preprocessProcesses, providers, availableCpus());
    if (processes === 0) return 0;
    preprocess = new PreprocessPool({
      processes,
      imageFormats: config.imageFormats,
      nice: config.computeNice,
      logger,
      onUnexpectedExit: () => metrics.preprocessExits.inc(),
    });
    metrics.attachPreprocess(preprocess);
    const ready = await preprocess.whenReady();
    logger.info({ processes, ready: preprocess.stats().ready, setting: config.preprocessProcesses }, ready ? 'preprocessing processes ready' : 'preprocessing processes not all ready: images are prepared in the server meanwhile');
    return processes;
  };
  app.decorate('ocular', {
    models,
    metrics,
    reload: (trigger: string) => reloadManifest(models, logger, trigger),
    bodyPool,
    startPreprocessing,
    get preprocess() {
      return preprocess;
    },
  });
  app.addHook('onClose', async () => {
    closed = true;
    await models.close();
    await parser.close();
    await preprocess?.close();
  });

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  registerErrorHandling(app);
  registerSecurityHeaders(app);
  registerInFlight(app, models);
  registerAuth(app, {
    keyDigests: config.authKeysFile !== undefined ? await loadKeyDigests(config.authKeysFile) : [],
    protectProbes: config.authProbes,
    protectMetrics: config.authMetrics,
  });

  app.addHook('onSend', async (request, reply) => {
    void reply.header('x-request-id', request.id);
  });

  // Bodies: images as raw bytes (the format is sniffed from the bytes later, never trusted from the header),
  // and multipart. Everything else is 415.
  app.removeAllContentTypeParsers();
  registerRawBodyParser(app, {
    types: [/^image\/[a-z0-9.+-]+$/i, 'application/octet-stream'],
    bodyLimit: config.bodyLimitBytes,
    pool: bodyPool,
  });
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
    await app.register(cors, { origin: config.corsOrigins, exposedHeaders: ['server-timing', 'x-request-id', 'retry-after'] });
  }

  await app.register(swagger, {
    openapi: {
      info: { title: 'Ocular', description: 'Inference server for computer-vision ONNX models', version: '0.1.0' },
    },
    transform: jsonSchemaTransform,
  });

  registerHealthRoutes(app, models);
  registerMetricsRoute(app, metrics);
  registerModelRoutes(app, models);
  registerPredictRoute(app, { models, metrics, maxFiles: config.maxFiles, bodyLimitBytes: config.bodyLimitBytes });
  await registerV2Routes(app, {
    models,
    metrics,
    parser,
    tensorBodyLimitBytes: config.tensorBodyLimitBytes,
    serverVersion: '0.1.0',
  });
  registerManifestWatch(app, models, { intervalMs: config.manifestWatchMs, logger });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  if (config.playground) registerPlaygroundRoutes(app);

  return app;
}
