import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { FastifyRequest } from 'fastify';
import type { ModelDescription } from '../core/model-handle.js';
import type { ModelRegistry } from '../core/registry.js';
import { modelNotFound, publicText } from '../errors.js';
import { ErrorBodySchema } from '../errors.js';
import { isAdmin } from '../plugins/auth.js';
import { ModelDescriptionSchema, ModelListSchema, ModelParamsSchema } from './schemas.js';

/**
 * A model's description as the caller may read it: whole for an admin key; for anyone else, its reason without
 * file paths or library internals, and a provider fallback named by provider only (onnxruntime's text, with its
 * source paths and function names, is logged at load and shown to admin keys).
 */
export function describeFor(request: Pick<FastifyRequest, 'caller'>, d: ModelDescription): ModelDescription {
  if (isAdmin(request)) return d;
  return {
    ...d,
    ...(d.reason !== undefined ? { reason: publicText(d.reason) } : {}),
    stages: d.stages.map((s) =>
      s.fallbackReason === undefined
        ? s
        : { ...s, fallbackReason: `${s.requestedProviders.filter((p) => p !== s.provider).join(', ')} could not be used; ${s.provider} serves (details in the server log)` },
    ),
  };
}

/** GET /v1/models and /v1/models/{name}: what is served, its state, provider (with node counts), I/O and batching. */
export function registerModelRoutes(app: FastifyInstance, models: ModelRegistry): void {
  const api = app.withTypeProvider<ZodTypeProvider>();
  api.get(
    '/v1/models',
    { schema: { summary: 'List the models in the manifest', response: { 200: ModelListSchema } } },
    async (request) => ({ models: models.list().map((m) => describeFor(request, m.describe())) }),
  );
  api.get(
    '/v1/models/:name',
    {
      schema: {
        summary: 'Describe one model',
        params: ModelParamsSchema,
        response: { 200: ModelDescriptionSchema, 404: ErrorBodySchema },
      },
    },
    async (request) => {
      const model = models.list().find((m) => m.name === request.params.name);
      if (model === undefined) throw modelNotFound(request.params.name, models.list().map((m) => m.name));
      return describeFor(request, model.describe());
    },
  );
}
