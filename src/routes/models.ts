import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { ModelRegistry } from '../core/registry.js';
import { OcularError } from '../errors.js';
import { ErrorBodySchema, ModelDescriptionSchema, ModelListSchema, ModelParamsSchema } from './schemas.js';

/** GET /v1/models and /v1/models/{name}: what is served, its state, provider (with node counts), I/O and batching. */
export function registerModelRoutes(app: FastifyInstance, models: ModelRegistry): void {
  const api = app.withTypeProvider<ZodTypeProvider>();
  api.get(
    '/v1/models',
    { schema: { summary: 'List the models in the manifest', response: { 200: ModelListSchema } } },
    async () => ({ models: models.list().map((m) => m.describe()) }),
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
      if (model === undefined) throw new OcularError('MODEL_NOT_FOUND', `no model named "${request.params.name.slice(0, 64)}" is served`);
      return model.describe();
    },
  );
}
