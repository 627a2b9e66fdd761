import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { createGrpcTransport, type GrpcTransport, type GrpcTransportOptions } from './server.js';

/**
 * The gRPC transport as part of the app: built with it (sharing its registry, lifecycle, byte budget and keys),
 * decorated as `app.grpc`, listened on by main.ts (or a test, on port 0) and closed with it. It closes in
 * Fastify's preClose, before the HTTP server and before any plugin's onClose: its calls in progress finish within
 * the grace (tryShutdown, then forceShutdown) while the registry still serves them.
 */

declare module 'fastify' {
  interface FastifyInstance {
    grpc: GrpcTransport;
  }
}

export function registerGrpc(
  app: FastifyInstance,
  opts: Omit<GrpcTransportOptions, 'logger'> & { logger: Logger; closeGraceMs: number },
): void {
  const { closeGraceMs, ...transport } = opts;
  const grpc = createGrpcTransport(transport);
  app.decorate('grpc', grpc);
  app.addHook('preClose', async () => {
    await grpc.close(closeGraceMs);
  });
}
