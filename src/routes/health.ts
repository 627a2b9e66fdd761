import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { ModelRegistry } from '../core/registry.js';
import { RETRY_AFTER_SECONDS, publicText } from '../errors.js';
import { isAdmin } from '../plugins/auth.js';
import { LivenessSchema, ReadinessSchema } from './schemas.js';

/**
 * Liveness and readiness are never the same check. /healthz answers while the process serves HTTP, whatever the
 * models do (Kubernetes restarts the pod when it fails). /readyz is 200 only when the server is not draining and
 * every model of the manifest is READY, bar those an operator unloaded on purpose (listed with
 * `unloadedOnPurpose`), and then only while some model is still served (`ModelRegistry.readiness`); otherwise 503
 * with the reason (Kubernetes stops routing traffic to the pod). Reasons reach a caller without an admin key
 * without file paths or library internals.
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
    async (request, reply) => {
      const text = isAdmin(request) ? (s: string) => s : publicText;
      const readiness = models.readiness();
      const list = readiness.models.map((m) => {
        const provider = models.get(m.name)?.describe().provider;
        return {
          name: m.name,
          version: m.version,
          state: m.state,
          ...(provider !== undefined && m.unloadedOnPurpose === undefined ? { provider } : {}),
          ...(m.reason !== undefined ? { reason: text(m.reason) } : {}),
          ...(m.unloadedOnPurpose !== undefined ? { unloadedOnPurpose: true } : {}),
        };
      });
      const status = models.isDraining ? 'draining' : readiness.ready ? 'ready' : 'not_ready';
      if (status !== 'ready') void reply.code(503).header('retry-after', String(RETRY_AFTER_SECONDS));
      return { status, ...(readiness.reason !== undefined ? { reason: text(readiness.reason) } : {}), models: list } as const;
    },
  );
}
