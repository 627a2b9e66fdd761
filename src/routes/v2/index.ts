import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { z } from 'zod';
import { headerLengthOf } from '../../core/infer-request.js';
import type { InferParser } from '../../core/infer-parser.js';
import type { ModelHandle, ModelRegistry } from '../../core/registry.js';
import { emptyTimings } from '../../core/telemetry.js';
import { tensorToBinary, tensorToJsonText } from '../../core/tensor-codec.js';
import { ERROR_CATALOG, OcularError, RETRY_AFTER_SECONDS, isRetryable } from '../../errors.js';
import { toOcularError } from '../../plugins/errors.js';
import { UNKNOWN_MODEL, type DropReason, type Metrics } from '../../plugins/metrics.js';
import { infer, metadataOf } from '../../tasks/tensor/inference.js';
import { admissionOf } from '../admission.js';
import { clientSignal, serverTiming } from '../predict.js';
import {
  InferenceResponseSchema,
  LiveSchema,
  ModelMetadataSchema,
  ModelParamsSchema,
  ModelReadySchema,
  ReadySchema,
  RepositoryIndexRequestSchema,
  RepositoryIndexSchema,
  RepositoryLoadRequestSchema,
  ServerMetadataSchema,
  V2ErrorSchema,
  VersionParamsSchema,
} from './schemas.js';

/**
 * The Open Inference Protocol (KServe v2) over REST, with Triton's binary tensor data, classification and model
 * repository extensions, under /v2. An encapsulated plugin: its own body parsing (every body as raw bytes, up to
 * the tensor body limit; the JSON is parsed by the InferParser, off the main thread when large), its own error
 * format (`{ "error": message, "code": CODE }`) and its own 404 for unknown /v2 paths.
 *
 * Health keeps the meaning of /healthz and /readyz: live while the process serves HTTP; ready when every model
 * is READY and the server is not draining. Per the protocol, a false answer is a 4xx (400) with the body saying
 * false; /readyz answers 503 for the same condition.
 */

export interface V2Options {
  models: ModelRegistry;
  metrics: Metrics;
  parser: InferParser;
  tensorBodyLimitBytes: number;
  serverVersion: string;
}

export const EXTENSIONS = ['binary_tensor_data', 'classification', 'model_repository'];

const DROP_REASONS: Partial<Record<string, DropReason>> = {
  CLIENT_CLOSED_REQUEST: 'client_closed',
  QUEUE_TIMEOUT: 'timeout',
  QUEUE_FULL: 'queue_full',
};

const REPOSITORY_BODY_LIMIT = 64 * 1024;

export function v2ErrorBody(err: OcularError): z.infer<typeof V2ErrorSchema> {
  return { error: err.status >= 500 ? ERROR_CATALOG[err.code].message : err.message, code: err.code };
}

function sendV2Error(reply: FastifyReply, err: OcularError): FastifyReply {
  if (isRetryable(err.code)) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  return reply.code(err.status).type('application/json; charset=utf-8').send(JSON.stringify(v2ErrorBody(err)));
}

/** Parses a small JSON body of the repository API (absent or empty: {}). */
function jsonBody<T extends z.ZodType>(schema: T, body: unknown): z.output<T> {
  let value: unknown = {};
  if (Buffer.isBuffer(body) && body.length > 0) {
    try {
      value = JSON.parse(body.toString('utf8'));
    } catch (err) {
      throw new OcularError('INVALID_REQUEST', `the body is not valid JSON: ${(err as Error).message}`);
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new OcularError('INVALID_REQUEST', parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '));
  }
  return parsed.data;
}

const errors = (...statuses: number[]) => Object.fromEntries(statuses.map((s) => [s, V2ErrorSchema]));

export async function registerV2Routes(app: FastifyInstance, opts: V2Options): Promise<void> {
  await app.register(
    async (v2) => {
      const { models, metrics, parser } = opts;
      const admission = admissionOf(models);
      const api = v2.withTypeProvider<ZodTypeProvider>();

      v2.removeAllContentTypeParsers();
      v2.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: opts.tensorBodyLimitBytes }, (_request, body, done) => done(null, body));
      v2.setErrorHandler((error, request, reply) => {
        const err = toOcularError(error);
        if (err.status >= 500) request.log.error({ err: error, code: err.code }, 'request failed');
        else request.log.info({ code: err.code, msg: err.message }, 'request refused');
        return sendV2Error(reply, err);
      });
      v2.setNotFoundHandler((request, reply) =>
        sendV2Error(reply, new OcularError('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]?.slice(0, 200)}`)),
      );

      /** The serving version of a model, checked against the version in the path when there is one. */
      const lookup = (name: string, version: string | undefined): ModelHandle => {
        const handle = models.get(name);
        if (handle === undefined) throw new OcularError('MODEL_NOT_FOUND', `no model named "${name.slice(0, 64)}" is served`);
        if (version !== undefined && version !== handle.version) {
          throw new OcularError('MODEL_NOT_FOUND', `model "${name.slice(0, 64)}" has no version "${version.slice(0, 64)}" (serving ${handle.version})`);
        }
        return handle;
      };

      // ---- server -------------------------------------------------------------------------------------------
      api.get(
        '/',
        { schema: { summary: 'v2: server metadata', tags: ['v2'], response: { 200: ServerMetadataSchema } } },
        async () => ({ name: 'ocular', version: opts.serverVersion, extensions: EXTENSIONS }),
      );
      api.get(
        '/health/live',
        { logLevel: 'warn', schema: { summary: 'v2: liveness', tags: ['v2'], response: { 200: LiveSchema } } },
        async () => ({ live: true }),
      );
      api.get(
        '/health/ready',
        { logLevel: 'warn', schema: { summary: 'v2: readiness (every model READY, not draining)', tags: ['v2'], response: { 200: ReadySchema, 400: ReadySchema } } },
        async (_request, reply) => {
          const ready = models.ready;
          if (!ready) void reply.code(400);
          return { ready };
        },
      );

      // ---- models -------------------------------------------------------------------------------------------
      const metadata = async (request: FastifyRequest<{ Params: { name: string; version?: string } }>) =>
        metadataOf(lookup(request.params.name, request.params.version));
      const metadataSchema = { tags: ['v2'], response: { 200: ModelMetadataSchema, ...errors(404) } };
      api.get('/models/:name', { schema: { summary: 'v2: model metadata', params: ModelParamsSchema, ...metadataSchema } }, metadata);
      api.get('/models/:name/versions/:version', { schema: { summary: 'v2: model metadata', params: VersionParamsSchema, ...metadataSchema } }, metadata);

      const modelReady = async (request: FastifyRequest<{ Params: { name: string; version?: string } }>, reply: FastifyReply) => {
        const handle = lookup(request.params.name, request.params.version);
        const ready = handle.state === 'READY' && !models.isDraining;
        if (!ready) void reply.code(400);
        return { name: handle.name, ready };
      };
      const readySchema = { tags: ['v2'], response: { 200: ModelReadySchema, 400: ModelReadySchema, ...errors(404) } };
      api.get('/models/:name/ready', { logLevel: 'warn', schema: { summary: 'v2: model readiness', params: ModelParamsSchema, ...readySchema } }, modelReady);
      api.get(
        '/models/:name/versions/:version/ready',
        { logLevel: 'warn', schema: { summary: 'v2: model readiness', params: VersionParamsSchema, ...readySchema } },
        modelReady,
      );

      // ---- inference ----------------------------------------------------------------------------------------
      const inferHandler = async (request: FastifyRequest<{ Params: { name: string; version?: string } }>, reply: FastifyReply) => {
        const started = performance.now();
        const { name, version } = request.params;
        const label = models.has(name) ? name : UNKNOWN_MODEL;
        const timings = emptyTimings();
        const signal = clientSignal(request, reply);
        const observe = (status: number, code: string) => metrics.observeRequest(label, status, code, (performance.now() - started) / 1000, timings);
        try {
          lookup(name, version);
          const model = models.acquire(name);
          // The lease on this version ends with the response (sent, or the connection gone): see ModelRegistry.
          reply.raw.once('close', () => models.release(model));
          if (version !== undefined && model.version !== version) {
            throw new OcularError('MODEL_NOT_FOUND', `model "${name}" has no version "${version.slice(0, 64)}" (serving ${model.version})`);
          }
          // Refused past the model's bound before the body is parsed or any image decoded (see admission.ts).
          admission.admit(model, reply);
          const body = request.body;
          if (!Buffer.isBuffer(body) || body.length === 0) throw new OcularError('INVALID_REQUEST', 'the request has no body');
          let t = performance.now();
          const parsed = await parser.parse(body, headerLengthOf(request.headers['inference-header-content-length'], body.length));
          timings.preprocessMs += performance.now() - t;
          const result = await infer(model, parsed, {
            signal,
            timings,
            limits: models.limits,
            prepare: models.prepare,
            baseDir: models.baseDir,
            telemetry: metrics,
            logger: request.log,
          });
          if (signal.aborted) throw new OcularError('CLIENT_CLOSED_REQUEST');

          t = performance.now();
          const binaryAll = parsed.parameters['binary_data_output'] === true;
          const wantBinary = parsed.outputs?.map((o) => o.parameters['binary_data']) ?? [];
          const chunks: Buffer[] = [];
          // Each output's JSON text; JSON data is spliced in as text so 64-bit integers keep every digit
          // (tensorToJsonText), which JSON.stringify cannot write.
          const outputs = result.outputs.map((o, i) => {
            const flag = wantBinary[i];
            const binary = flag === true || (flag === undefined && binaryAll);
            const params = { ...result.outputParameters[i] };
            if (!binary) {
              const meta = { name: o.name, datatype: o.datatype, shape: o.shape, ...(Object.keys(params).length > 0 ? { parameters: params } : {}) };
              return `${JSON.stringify(meta).slice(0, -1)},"data":${tensorToJsonText(o)}}`;
            }
            const bytes = tensorToBinary(o);
            chunks.push(bytes);
            return JSON.stringify({ name: o.name, datatype: o.datatype, shape: o.shape, parameters: { ...params, binary_data_size: bytes.length } });
          });
          const response: z.input<typeof InferenceResponseSchema> = {
            model_name: model.name,
            model_version: model.version,
            ...(parsed.id !== undefined ? { id: parsed.id } : {}),
            outputs: [],
          };
          // `outputs` is the last key: its empty array, `[]}`, is where the outputs' text goes.
          const header = `${JSON.stringify(response).slice(0, -3)}[${outputs.join(',')}]}`;
          timings.postprocessMs += performance.now() - t;
          void reply.header('server-timing', serverTiming(timings, performance.now() - started));
          observe(200, '');
          if (chunks.length === 0) return reply.type('application/json').send(header);
          const head = Buffer.from(header, 'utf8');
          void reply.header('inference-header-content-length', String(head.length));
          return reply.type('application/octet-stream').send(Buffer.concat([head, ...chunks]));
        } catch (error) {
          const err = signal.aborted ? new OcularError('CLIENT_CLOSED_REQUEST', undefined, { cause: error }) : toOcularError(error);
          const drop = DROP_REASONS[err.code];
          if (drop !== undefined && label !== UNKNOWN_MODEL) metrics.dropRequest(label, drop);
          observe(err.status, err.code);
          if (err.code === 'CLIENT_CLOSED_REQUEST') request.log.info({ model: label }, 'client went away, request dropped');
          else if (err.status >= 500) request.log.error({ err: error, code: err.code }, 'inference failed');
          else request.log.info({ code: err.code, msg: err.message }, 'request refused');
          return sendV2Error(reply, err);
        }
      };
      const inferSchema = {
        tags: ['v2'],
        description:
          'Body: the JSON inference request, or (binary tensor data extension) a JSON header of Inference-Header-Content-Length bytes followed by the binary tensors.',
        response: { 200: InferenceResponseSchema, ...errors(400, 404, 413, 415, 422, 500, 503) },
      };
      api.post('/models/:name/infer', { schema: { summary: 'v2: inference', params: ModelParamsSchema, ...inferSchema } }, inferHandler);
      api.post(
        '/models/:name/versions/:version/infer',
        { schema: { summary: 'v2: inference', params: VersionParamsSchema, ...inferSchema } },
        inferHandler,
      );

      // ---- model repository extension ----------------------------------------------------------------------
      api.post(
        '/repository/index',
        { bodyLimit: REPOSITORY_BODY_LIMIT, schema: { summary: 'v2 repository: every model and its state', tags: ['v2'], response: { 200: RepositoryIndexSchema, ...errors(400) } } },
        async (request) => {
          const { ready } = jsonBody(RepositoryIndexRequestSchema, request.body);
          return models.index().filter((m) => ready !== true || m.state === 'READY');
        },
      );
      api.post(
        '/repository/models/:name/load',
        {
          bodyLimit: REPOSITORY_BODY_LIMIT,
          schema: {
            summary: 'v2 repository: load (or reload) a model from the manifest, without downtime',
            tags: ['v2'],
            params: ModelParamsSchema,
            response: { 200: RepositoryLoadRequestSchema.pick({}), ...errors(400, 404, 503) },
          },
        },
        async (request) => {
          jsonBody(RepositoryLoadRequestSchema, request.body);
          try {
            await models.loadModel(request.params.name);
          } catch (err) {
            if (err instanceof OcularError) throw err;
            throw new OcularError('MODEL_LOAD_FAILED', err instanceof Error ? err.message : String(err), { cause: err });
          }
          return {};
        },
      );
      api.post(
        '/repository/models/:name/unload',
        {
          bodyLimit: REPOSITORY_BODY_LIMIT,
          schema: {
            summary: 'v2 repository: stop serving a model (requests in flight finish)',
            tags: ['v2'],
            params: ModelParamsSchema,
            response: { 200: RepositoryLoadRequestSchema.pick({}), ...errors(400, 404, 503) },
          },
        },
        async (request) => {
          jsonBody(RepositoryLoadRequestSchema, request.body);
          await models.unloadModel(request.params.name);
          return {};
        },
      );
    },
    { prefix: '/v2' },
  );
}
