import type { z } from 'zod';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { ModelRegistry } from '../core/registry.js';
import { emptyTimings, type Timings } from '../core/telemetry.js';
import { OcularError } from '../errors.js';
import { errorBody, sendError, toOcularError } from '../plugins/errors.js';
import { UNKNOWN_MODEL, type DropReason, type Metrics } from '../plugins/metrics.js';
import { parseParams } from '../tasks/pipeline.js';
import { admissionOf } from './admission.js';
import { claimBody } from './raw-body.js';
import {
  ErrorBodySchema,
  ModelParamsSchema,
  MultipartResultSchema,
  PredictQuerySchema,
  PredictResultSchema,
} from './schemas.js';

/**
 * POST /v1/models/{name}/predict: one image as the raw body (image/* or application/octet-stream), or several as
 * multipart/form-data (one result per file, in order; a bad file gets an error slot and the others still answer).
 * The route validates and times; the pipeline does the work.
 */

export interface PredictRouteOptions {
  models: ModelRegistry;
  metrics: Metrics;
  maxFiles: number;
  bodyLimitBytes: number;
}

const DROP_REASONS: Partial<Record<string, DropReason>> = {
  CLIENT_CLOSED_REQUEST: 'client_closed',
  QUEUE_TIMEOUT: 'timeout',
  QUEUE_FULL: 'queue_full',
};

export function serverTiming(t: Timings, totalMs: number): string {
  const f = (v: number) => v.toFixed(2);
  return `preprocess;dur=${f(t.preprocessMs)}, queue;dur=${f(t.queueMs)}, inference;dur=${f(t.inferenceMs)}, postprocess;dur=${f(t.postprocessMs)}, total;dur=${f(totalMs)}`;
}

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

export function registerPredictRoute(app: FastifyInstance, opts: PredictRouteOptions): void {
  const { models, metrics } = opts;
  // Requests whose handler ran: the handler counts their drops; a client that leaves mid-upload of a raw body
  // never reaches it, and is counted by onRequestAbort instead (once either way).
  const handled = new WeakSet<FastifyRequest>();
  // Admission (see admission.ts): past its bound, a model's requests are refused 503 QUEUE_FULL before decoding.
  const admission = admissionOf(models);

  app.withTypeProvider<ZodTypeProvider>().post(
    '/v1/models/:name/predict',
    {
      schema: {
        summary: 'Run a model on one image (raw body) or several (multipart/form-data)',
        params: ModelParamsSchema,
        querystring: PredictQuerySchema,
        response: {
          200: PredictResultSchema.or(MultipartResultSchema),
          400: ErrorBodySchema,
          404: ErrorBodySchema,
          413: ErrorBodySchema,
          415: ErrorBodySchema,
          422: ErrorBodySchema,
          500: ErrorBodySchema,
          503: ErrorBodySchema,
        },
      },
      onRequestAbort: async (request) => {
        if (handled.has(request)) return;
        const label = models.has(request.params.name) ? request.params.name : UNKNOWN_MODEL;
        if (label !== UNKNOWN_MODEL) metrics.dropRequest(label, 'client_closed');
        metrics.observeRequest(label, 499, 'CLIENT_CLOSED_REQUEST', 0, undefined);
        request.log.info({ model: label }, 'client went away during upload, request dropped');
      },
    },
    async (request, reply) => {
      handled.add(request);
      const started = performance.now();
      const name = request.params.name;
      const label = models.has(name) ? name : UNKNOWN_MODEL;
      const timings = emptyTimings();
      const signal = clientSignal(request, reply);
      const observe = (status: number, code: string) =>
        metrics.observeRequest(label, status, code, (performance.now() - started) / 1000, timings);
      try {
        const model = models.acquire(name);
        // The lease on this version ends with the response (sent, or the connection gone): see ModelRegistry.
        reply.raw.once('close', () => models.release(model));
        admission.admit(model, reply);
        const query = Object.fromEntries(Object.entries(request.query).filter(([, v]) => v !== undefined));
        const params = parseParams(model.pipeline.paramsSchema, query);
        const base = { model: model.name, version: model.version };
        let body: z.output<typeof PredictResultSchema> | z.output<typeof MultipartResultSchema>;
        if (request.isMultipart()) {
          const files = await readFiles(request, opts.maxFiles);
          const results = await Promise.all(
            files.map(async (file) => {
              try {
                return await model.pipeline.predict(file, params, { signal, timings });
              } catch (err) {
                const e = toOcularError(err);
                if (e.code === 'CLIENT_CLOSED_REQUEST') throw e;
                if (e.status >= 500) request.log.error({ err, code: e.code }, 'file failed');
                return { error: errorBody(e) };
              }
            }),
          );
          body = { ...base, results } as z.output<typeof MultipartResultSchema>;
        } else {
          const image = request.body;
          if (!Buffer.isBuffer(image) || image.length === 0) throw new OcularError('INVALID_REQUEST', 'the request has no image body');
          // The body is a pooled buffer: it goes back only once the pipeline, sharp included, is done with it.
          const result = await model.pipeline.predict(image, params, { signal, timings }).finally(claimBody(request));
          body = { ...base, ...result } as z.output<typeof PredictResultSchema>;
        }
        // The client left while its batch ran (work that could not be skipped): nobody to answer, count the drop.
        if (signal.aborted) throw new OcularError('CLIENT_CLOSED_REQUEST');
        const totalMs = performance.now() - started;
        void reply.header('server-timing', serverTiming(timings, totalMs));
        observe(200, '');
        return body;
      } catch (error) {
        // Whatever failed after the client left (a multipart stream cut mid-upload, a batch), it is a drop.
        const err = signal.aborted ? new OcularError('CLIENT_CLOSED_REQUEST', undefined, { cause: error }) : toOcularError(error);
        const drop = DROP_REASONS[err.code];
        if (drop !== undefined && label !== UNKNOWN_MODEL) metrics.dropRequest(label, drop);
        observe(err.status, err.code);
        if (err.code === 'CLIENT_CLOSED_REQUEST') {
          request.log.info({ model: label }, 'client went away, request dropped');
          return sendError(reply, err);
        }
        if (err.status >= 500) request.log.error({ err: error, code: err.code }, 'prediction failed');
        return sendError(reply, err);
      }
    },
  );
}

/** Reads every file part into memory (the multipart plugin enforces the file count and size limits). */
async function readFiles(request: FastifyRequest, maxFiles: number): Promise<Buffer[]> {
  const files: Buffer[] = [];
  try {
    for await (const part of request.parts()) {
      if (part.type !== 'file') continue;
      if (files.length >= maxFiles) throw new OcularError('TOO_MANY_FILES', `at most ${maxFiles} files per request`);
      files.push(await part.toBuffer());
    }
  } catch (err) {
    // The plugin's own limits carry FST_ codes (mapped by the error plugin); anything else the multipart parser
    // throws (no boundary, a body cut short, a broken part header) is the client's malformed body, not a 500.
    const code = (err as { code?: unknown }).code;
    if (err instanceof OcularError || (typeof code === 'string' && code.startsWith('FST_'))) throw err;
    throw new OcularError('INVALID_REQUEST', 'the multipart body is malformed', { cause: err });
  }
  if (files.length === 0) throw new OcularError('NO_FILE');
  return files;
}
