import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { ModelRegistry } from '../core/registry.js';
import { RETRY_AFTER_SECONDS } from '../errors.js';
import { LivenessSchema, ReadinessSchema } from './schemas.js';

/**
 * Liveness and readiness are never the same check. /healthz answers while the process serves HTTP, whatever the
 * models do (Kubernetes restarts the pod when it fails). /readyz is 200 only when every model in the manifest is
 * READY and the server is not draining (Kubernetes stops routing traffic to the pod when it fails).
 */
export function registerHealthRoutes(app: FastifyInstance, models: ModelRegistry): void {
  const api = app.withTypeProvider<ZodTypeProvider>();
  api.get(
    '/healthz',
    { logLevel: 'warn', schema: { summary: 'Liveness', response: { 200: LivenessSchema } } },
    async () => ({ status: 'ok' as const }),
  );
  api.get(
    '/readyz',
    { logLevel: 'warn', schema: { summary: 'Readiness', response: { 200: ReadinessSchema, 503: ReadinessSchema } } },
    async (_request, reply) => {
      const list = models.list().map((m) => {
        const d = m.describe();
        return {
          name: d.name,
          version: d.version,
          state: d.state,
          ...(d.provider !== undefined ? { provider: d.provider } : {}),
          ...(d.reason !== undefined ? { reason: d.reason } : {}),
        };
      });
      const status = models.isDraining ? 'draining' : models.ready ? 'ready' : 'not_ready';
      if (status !== 'ready') void reply.code(503).header('retry-after', String(RETRY_AFTER_SECONDS));
      return { status, models: list } as const;
    },
  );
}
