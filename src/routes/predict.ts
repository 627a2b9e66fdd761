import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { RequestLifecycle } from '../http/lifecycle.js';
import { fastifyLifecycle } from '../http/fastify-lifecycle.js';
import { ErrorBodySchema, OcularError } from '../errors.js';
import { errorBody, toOcularError } from '../plugins/errors.js';
import { parseParams } from '../tasks/pipeline.js';
import { bodyTooLarge, claimBody } from '../plugins/raw-body.js';
import {
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
  lifecycle: RequestLifecycle;
  maxFiles: number;
  bodyLimitBytes: number;
  /** Bytes an answer may take, across its files (segmentation masks grow with the image). */
  maxResponseBytes: number;
}

/**
 * The header that names the classes of a PNG class map: `index=label` for each class in the answer, comma-separated,
 * each label percent-encoded (a label may hold commas or any Unicode; a header is ASCII).
 */
export const MASK_LABELS_HEADER = 'ocular-mask-labels';
/** The PNG's value for pixels whose class was left out (classes=, min_area). */
export const MASK_VOID_HEADER = 'ocular-mask-void';

export function registerPredictRoute(app: FastifyInstance, opts: PredictRouteOptions): void {
  // Lease, admission (past its bound a model's requests are refused 503 QUEUE_FULL before decoding), timings,
  // metrics and drops: the request lifecycle shared with /v2 infer.
  const lifecycle = fastifyLifecycle(opts.lifecycle);

  app.withTypeProvider<ZodTypeProvider>().post(
    '/v1/models/:name/predict',
    {
      schema: {
        summary: 'Run a model on one image (raw body) or several (multipart/form-data)',
        params: ModelParamsSchema,
        querystring: PredictQuerySchema,
        response: {
          200: PredictResultSchema.or(MultipartResultSchema).describe(
            'JSON; with format=png (semantic segmentation), an image/png class map instead, its classes named by the Ocular-Mask-Labels header',
          ),
          400: ErrorBodySchema,
          404: ErrorBodySchema,
          413: ErrorBodySchema,
          415: ErrorBodySchema,
          422: ErrorBodySchema,
          500: ErrorBodySchema,
          503: ErrorBodySchema,
        },
      },
      // The model is looked up and the request admitted from the URL before its body is read (404 and 503 at once).
      onRequest: lifecycle.decide((request) => {
        const parsed = ModelParamsSchema.safeParse(request.params);
        return parsed.success ? { name: parsed.data.name } : undefined;
      }),
      onRequestAbort: lifecycle.onRequestAbort,
    },
    async (request, reply) => {
      const body = await lifecycle.handle(request, reply, { name: request.params.name }, async ({ model, signal, timings, admit }) => {
        const query = Object.fromEntries(Object.entries(request.query).filter(([, v]) => v !== undefined));
        const sentKeys = [...new URLSearchParams(request.url.split('?')[1] ?? '').keys()];
        const params = parseParams(model.pipeline.paramsSchema, query, sentKeys);
        const base = { model: model.name, version: model.version };
        const answerBytes = { left: opts.maxResponseBytes };
        if (request.isMultipart()) {
          if (query['format'] === 'png') throw new OcularError('INVALID_PARAMETER', 'format=png answers one image: send it as the body, or leave format out for JSON results per file');
          const files = await readFiles(request, opts);
          // Each file is admitted like a request of one image, before any is decoded (the request counted as one).
          admit(files.length - 1);
          const results = await Promise.all(
            files.map(async (file) => {
              try {
                return await model.pipeline.predict(file, params, { signal, timings, answerBytes });
              } catch (err) {
                const e = toOcularError(err);
                if (e.code === 'CLIENT_CLOSED_REQUEST') throw e;
                if (e.status >= 500) request.log.error({ err, code: e.code }, 'file failed');
                return { error: errorBody(e) };
              }
            }),
          );
          return { ...base, results };
        }
        const image = request.body;
        if (!Buffer.isBuffer(image) || image.length === 0) throw new OcularError('INVALID_REQUEST', 'the request has no image body');
        // The body is a pooled buffer: it goes back only once the pipeline, sharp included, is done with it.
        const result = await model.pipeline.predict(image, params, { signal, timings, answerBytes }).finally(claimBody(request));
        if ('png' in result && result.png !== undefined) {
          const labels = result.classes.map((c) => `${c.index}=${encodeURIComponent(c.label)}`).join(',');
          return { pngMask: result.png.data, labels, voidValue: result.png.voidValue };
        }
        return { ...base, ...result };
      });
      if (body === undefined) return reply;
      if ('pngMask' in body) {
        // The untyped reply: the route's 200 schema describes its JSON answers; this one is bytes, never serialised.
        return (reply as FastifyReply).type('image/png').header(MASK_LABELS_HEADER, body.labels).header(MASK_VOID_HEADER, String(body.voidValue)).send(body.pngMask);
      }
      return body;
    },
  );
}

/** Reads every file part into memory (the multipart plugin enforces the file count and size limits). */
async function readFiles(request: FastifyRequest, { maxFiles, bodyLimitBytes }: PredictRouteOptions): Promise<Buffer[]> {
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
    if (code === 'FST_REQ_FILE_TOO_LARGE') throw bodyTooLarge(bodyLimitBytes, 'OCULAR_BODY_LIMIT_BYTES');
    if (err instanceof OcularError || (typeof code === 'string' && code.startsWith('FST_'))) throw err;
    throw new OcularError('INVALID_REQUEST', 'the multipart body is malformed', { cause: err });
  }
  if (files.length === 0) throw new OcularError('NO_FILE');
  return files;
}
