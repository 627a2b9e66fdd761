import { Readable } from 'node:stream';
import { setImmediate } from 'node:timers/promises';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { z } from 'zod';
import { headerLengthOf } from './request.js';
import { isInferBody, joinBody, readInferBody } from './body.js';
import type { InferParser } from './parser.js';
import type { ModelHandle } from '../../core/model-handle.js';
import type { ModelRegistry } from '../../core/registry.js';
import { OcularError, V2ErrorSchema, capText, describeValue, issuesText, publicText } from '../../errors.js';
import { isAdmin } from '../../plugins/auth.js';
import { compressAnswer, decompressBody, requestCoding, responseCoding } from './content-encoding.js';
import { throwIfAborted } from '../../tasks/pipeline.js';
import { recordStage } from '../../core/tracing.js';
import { EXTENSIONS, boundsOf, configOf, infer, lookupModel, metadataOf } from './model.js';
import { planInferResponse, writePlanned, type InferResponsePlan } from './response.js';
import type { RequestLifecycle } from '../../http/lifecycle.js';
import { fastifyLifecycle } from '../../http/fastify-lifecycle.js';
import {
  InferenceResponseSchema,
  LiveSchema,
  ModelConfigSchema,
  ModelMetadataSchema,
  ModelParamsSchema,
  ModelReadySchema,
  ReadySchema,
  RepositoryIndexRequestSchema,
  RepositoryIndexSchema,
  RepositoryActionResponseSchema,
  RepositoryLoadRequestSchema,
  ServerMetadataSchema,
  VersionParamsSchema,
} from './schemas.js';

/**
 * The Open Inference Protocol (KServe v2) over REST, with Triton's binary tensor data, classification and model
 * repository extensions, under /v2. An encapsulated plugin: its own body parsing (every body as raw bytes, up to
 * the tensor body limit; the JSON is parsed by the InferParser, off the main thread when large). Its errors, the
 * 404 of unknown /v2 paths included, are answered by the app's one error path (plugins/errors.ts) in the
 * protocol's format, `{ "error": message, "code": CODE }`; inference runs through the one request lifecycle.
 *
 * Health keeps the meaning of /healthz and /readyz: live while the process serves HTTP; ready as
 * `ModelRegistry.readiness` says. Per the protocol, a false answer is a 4xx (400) with the body saying false;
 * /readyz answers 503 for the same condition, with the reason.
 *
 * Model control, as Triton's --model-control-mode: under `none` (the default) the repository API lists models
 * but refuses load and unload (403 MODEL_CONTROL_DISABLED); under `explicit` it loads and unloads, and with API
 * keys only for admin keys (403 FORBIDDEN for the others). Each load and unload is logged with the key's id.
 *
 * Request bodies may be gzip or deflate (Content-Encoding), decompressed within the body limit; inference
 * answers are compressed when Accept-Encoding asks (content-encoding.ts).
 */

export interface V2Options {
  models: ModelRegistry;
  parser: InferParser;
  /** The request lifecycle shared with /v1 predict (lease, admission, timings, metrics, drops). */
  lifecycle: RequestLifecycle;
  tensorBodyLimitBytes: number;
  /** Largest answer, as bounded from its outputs' shapes and datatypes before it is written (RESPONSE_TOO_LARGE beyond). */
  maxResponseBytes: number;
  serverVersion: string;
  /** `none`: the repository API refuses load and unload; `explicit`: it may (admin keys only, with keys). */
  modelControl: 'none' | 'explicit';
  /** Whether API keys are on (then only admin keys may load and unload). */
  authEnabled: boolean;
}

/** Answers bounded above this are streamed in parts, the main thread yielding between them (see streamParts). */
export const STREAM_ABOVE_BYTES = 1024 * 1024;

/**
 * A planned answer as a stream: one part (PART_ELEMENTS values) written per turn of the event loop, and only as
 * fast as the client reads (the stream's buffer is small), so a large answer neither blocks other requests nor
 * sits in memory whole; the plan's outputs are released once the stream ends or is destroyed.
 */
function streamParts(plan: InferResponsePlan): Readable {
  async function* parts(): AsyncGenerator<Buffer> {
    for (const part of plan.parts()) {
      yield typeof part === 'string' ? Buffer.from(part, 'utf8') : part;
      await setImmediate();
    }
  }
  return Readable.from(parts(), { objectMode: false, highWaterMark: 64 * 1024 });
}

/** RESPONSE_TOO_LARGE, naming the bound, the limit and its option. */
function tooLarge(plan: InferResponsePlan, limit: number): OcularError {
  const mb = (n: number) => `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  const hint = plan.type === 'json' ? '; binary outputs (binary_data_output) take 4 bytes per FP32 value instead of up to 25 in JSON' : '';
  return new OcularError(
    'RESPONSE_TOO_LARGE',
    `the answer would take up to ${plan.boundBytes} bytes (${mb(plan.boundBytes)}), over the limit of ${limit} bytes (${mb(limit)}, OCULAR_MAX_RESPONSE_BYTES)${hint}`,
  );
}

const REPOSITORY_BODY_LIMIT = 64 * 1024;

/** Parses a small JSON body of the repository API (absent or empty: {}). */
function jsonBody<T extends z.ZodType>(schema: T, body: unknown): z.output<T> {
  let value: unknown = {};
  if (isInferBody(body) && body.byteLength > 0) {
    try {
      value = JSON.parse(joinBody(body).toString('utf8'));
    } catch (err) {
      throw new OcularError('INVALID_REQUEST', `the body is not valid JSON: ${capText((err as Error).message, 160)}`);
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new OcularError('INVALID_REQUEST', issuesText(parsed.error.issues));
  }
  return parsed.data;
}

/** A load's `force` parameter: absent (false) or a boolean; anything else is a 400. */
function loadForceOf(parameters: Record<string, unknown>): boolean {
  const force = parameters['force'];
  if (force === undefined) return false;
  if (typeof force !== 'boolean') throw new OcularError('INVALID_REQUEST', `parameters.force must be true or false, not ${describeValue(force)}`);
  return force;
}

const errors = (...statuses: number[]) => Object.fromEntries(statuses.map((s) => [s, V2ErrorSchema]));

export async function registerV2Routes(app: FastifyInstance, opts: V2Options): Promise<void> {
  await app.register(
    async (v2) => {
      const { models, parser } = opts;
      const lifecycle = fastifyLifecycle(opts.lifecycle);
      const api = v2.withTypeProvider<ZodTypeProvider>();

      v2.removeAllContentTypeParsers();
      // Bodies read into memory of their own (body.ts): one buffer sized from Content-Length, or bounded segments;
      // within the route's bodyLimit (the tensor body limit for inference, less for the repository API).
      v2.addContentTypeParser('*', (request, payload, done) => readInferBody(request, payload, request.routeOptions.bodyLimit, done));
      // A compressed body is decompressed on its way to the body reader, within the route's body limit.
      v2.addHook('preParsing', async (request, _reply, payload) => {
        const coding = requestCoding(request.headers['content-encoding']);
        if (coding === undefined) return payload;
        const limit = request.routeOptions.url?.startsWith('/v2/repository/') === true ? REPOSITORY_BODY_LIMIT : opts.tensorBodyLimitBytes;
        return decompressBody(payload, coding, limit);
      });

      /** The serving version of a model, checked against the version in the path when there is one. */
      const lookup = (name: string, version: string | undefined): ModelHandle => lookupModel(models, name, version);

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

      const config = async (request: FastifyRequest<{ Params: { name: string; version?: string } }>) =>
        configOf(lookup(request.params.name, request.params.version));
      const configSchema = { tags: ['v2'], response: { 200: ModelConfigSchema, ...errors(404) } };
      api.get('/models/:name/config', { schema: { summary: "v2: model configuration (Triton's model_config fields)", params: ModelParamsSchema, ...configSchema } }, config);
      api.get(
        '/models/:name/versions/:version/config',
        { schema: { summary: "v2: model configuration (Triton's model_config fields)", params: VersionParamsSchema, ...configSchema } },
        config,
      );

      // ---- inference ----------------------------------------------------------------------------------------
      const inferHandler = async (request: FastifyRequest, reply: FastifyReply) => {
        // Validated against the route's params schema before the handler runs.
        const { name, version } = request.params as { name: string; version?: string };
        const answer = await lifecycle.handle(request, reply, { name, version }, async ({ model, signal, timings, admit }) => {
          const body = request.body;
          if (!isInferBody(body) || body.byteLength === 0) throw new OcularError('INVALID_REQUEST', 'the request has no body');
          let t = performance.now();
          // The model's bounds go with the body: element counts are checked from the header, before any is made.
          const parsed = await parser.parse(body, headerLengthOf(request.headers['inference-header-content-length'], body.byteLength), signal, boundsOf(model));
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
          t = performance.now();
          const plan = planInferResponse({
            modelName: model.name,
            modelVersion: model.version,
            id: parsed.id,
            outputs: result.outputs,
            outputParameters: result.outputParameters,
            // binary_data: true, binary; any other value, JSON; absent, as binary_data_output says.
            binaryOutputs: parsed.outputs?.map(({ parameters: p }) => (p['binary_data'] === undefined ? undefined : p['binary_data'] === true)) ?? [],
            binaryAll: parsed.parameters['binary_data_output'] === true,
          });
          // Decided from shapes and datatypes, before any of the answer is written.
          if (plan.boundBytes > opts.maxResponseBytes) throw tooLarge(plan, opts.maxResponseBytes);
          const headerLength = plan.headerLength;
          const written = plan.boundBytes > STREAM_ABOVE_BYTES ? streamParts(plan) : writePlanned(plan);
          recordStage(timings, 'postprocess', t);
          return { type: plan.type, body: written, headerLength };
        });
        if (answer === undefined) return reply;
        // As Triton: compressed when Accept-Encoding asks; the header length stays that of the decompressed answer.
        const coding = responseCoding(request.headers['accept-encoding']);
        const body = coding === undefined ? answer.body : compressAnswer(answer.body, coding);
        void reply.header('vary', 'accept-encoding');
        if (coding !== undefined) void reply.header('content-encoding', coding);
        if (answer.type === 'json') return reply.type('application/json').send(body);
        void reply.header('inference-header-content-length', String(answer.headerLength));
        return reply.type('application/octet-stream').send(body);
      };
      const inferSchema = {
        tags: ['v2'],
        description:
          'Body: the JSON inference request, or (binary tensor data extension) a JSON header of Inference-Header-Content-Length bytes followed by the binary tensors.',
        response: { 200: InferenceResponseSchema, ...errors(400, 404, 413, 415, 422, 500, 503) },
      };
      const onRequestAbort = lifecycle.onRequestAbort;
      // The model is looked up and the request admitted from the URL before its body is read (404 and 503 at once).
      const decide = (params: typeof ModelParamsSchema | typeof VersionParamsSchema) =>
        lifecycle.decide((request) => {
          const parsed = params.safeParse(request.params);
          if (!parsed.success) return undefined;
          return { name: parsed.data.name, version: 'version' in parsed.data ? String(parsed.data.version) : undefined };
        });
      api.post(
        '/models/:name/infer',
        {
          onRequest: decide(ModelParamsSchema),
          onRequestAbort,
          bodyLimit: opts.tensorBodyLimitBytes,
          schema: { summary: 'v2: inference', params: ModelParamsSchema, ...inferSchema },
        },
        inferHandler,
      );
      api.post(
        '/models/:name/versions/:version/infer',
        {
          onRequest: decide(VersionParamsSchema),
          onRequestAbort,
          bodyLimit: opts.tensorBodyLimitBytes,
          schema: { summary: 'v2: inference', params: VersionParamsSchema, ...inferSchema },
        },
        inferHandler,
      );

      // ---- model repository extension ----------------------------------------------------------------------
      api.post(
        '/repository/index',
        { bodyLimit: REPOSITORY_BODY_LIMIT, schema: { summary: 'v2 repository: every model and its state', tags: ['v2'], response: { 200: RepositoryIndexSchema, ...errors(400) } } },
        async (request) => {
          const { ready } = jsonBody(RepositoryIndexRequestSchema, request.body);
          const text = isAdmin(request) ? (t: string) => t : publicText;
          return models
            .index()
            .filter((m) => ready !== true || m.state === 'READY')
            .map((m) => (m.reason !== undefined ? { ...m, reason: text(m.reason) } : m));
        },
      );
      /**
       * A repository action on one model: a JSON body of `{}` (or none, or with `parameters`) in, `{}` (with a load's
       * status) out. Refused under model control `none`, and to keys that are not admin keys; Triton's load
       * overrides (`config`, `file:...`) are refused by name, since Ocular loads only the manifest's entry (a load's
       * own `force` is Ocular's). Logged with the caller's key id, whatever the outcome.
       */
      type ActionAnswer = z.output<typeof RepositoryActionResponseSchema>;
      const repositoryAction = (
        action: 'load' | 'unload',
        summary: string,
        run: (name: string, parameters: Record<string, unknown>) => Promise<ActionAnswer | void>,
      ): void => {
        api.post(
          `/repository/models/:name/${action}`,
          {
            bodyLimit: REPOSITORY_BODY_LIMIT,
            schema: {
              summary,
              tags: ['v2'],
              params: ModelParamsSchema,
              response: { 200: RepositoryActionResponseSchema, ...errors(400, 403, 404, 503) },
            },
          },
          async (request) => {
            const model = request.params.name.slice(0, 256);
            const caller = request.caller?.id ?? 'anonymous';
            const refuse = (err: OcularError): never => {
              request.log.warn({ model, action, caller, code: err.code }, 'repository action refused');
              throw err;
            };
            if (opts.modelControl === 'none') refuse(new OcularError('MODEL_CONTROL_DISABLED', `model control is off (OCULAR_MODEL_CONTROL=none): the repository API does not ${action} models; set OCULAR_MODEL_CONTROL=explicit to allow it`));
            if (opts.authEnabled && !isAdmin(request)) refuse(new OcularError('FORBIDDEN', `this API key may not ${action} models: an admin key is needed (OCULAR_AUTH_ADMIN_KEYS_FILE, or "admin <key>" in the keys file)`));
            const { parameters } = jsonBody(RepositoryLoadRequestSchema, request.body);
            // Triton's client always sends unload_dependents (a boolean): Ocular serves no ensembles, so no model
            // depends on another and either value means the same.
            const overrides = Object.entries(parameters ?? {})
              .filter(([key, value]) => !(action === 'unload' && key === 'unload_dependents' && typeof value === 'boolean') && !(action === 'load' && key === 'force'))
              .map(([key]) => key);
            if (overrides.length > 0) {
              refuse(
                new OcularError(
                  'INVALID_REQUEST',
                  `${action} parameters Ocular does not support: ${capText(overrides.map((k) => JSON.stringify(k.slice(0, 64))).join(', '), 300)} (Ocular loads the manifest's entry for the model; change the manifest to change it)`,
                ),
              );
            }
            request.log.info({ model, action, caller }, 'repository action');
            let answer: ActionAnswer | void;
            try {
              answer = await run(request.params.name, parameters ?? {});
            } catch (err) {
              request.log.warn({ model, action, caller, err }, 'repository action failed');
              // The reason as any caller may read it: no file path, no library internals (admins get it whole).
              if (err instanceof OcularError && !isAdmin(request)) throw new OcularError(err.code, publicText(err.message), { cause: err });
              throw err;
            }
            request.log.info({ model, action, caller, ...(answer?.status !== undefined && { status: answer.status }) }, 'repository action done');
            return answer ?? {};
          },
        );
      };
      repositoryAction('load', 'v2 repository: load (or reload) a model from the manifest, without downtime; unchanged model and files answer status "unchanged" unless parameters.force is true', async (name, parameters) => {
        const force = loadForceOf(parameters);
        try {
          const { changed } = await models.loadModel(name, { force });
          return { status: changed ? 'loaded' : 'unchanged' };
        } catch (err) {
          if (err instanceof OcularError) throw err;
          throw new OcularError('MODEL_LOAD_FAILED', err instanceof Error ? err.message : String(err), { cause: err });
        }
      });
      repositoryAction('unload', 'v2 repository: stop serving a model (requests in flight finish)', (name) => models.unloadModel(name));
    },
    { prefix: '/v2' },
  );
}
