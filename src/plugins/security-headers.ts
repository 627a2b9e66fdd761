import type { FastifyInstance } from 'fastify';

/**
 * Security headers on every answer (after OWASP's REST security cheat sheet for a JSON API): the body is data,
 * never a document to sniff, frame or run. A route that serves HTML (the playground) sets its own
 * Content-Security-Policy and caching; this plugin fills in only what a route left unset.
 * No Strict-Transport-Security: Ocular speaks plain HTTP behind a TLS-terminating proxy or mesh, which owns it.
 */
export const SECURITY_HEADERS: Record<string, string> = {
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

const API_CSP = "default-src 'none'; frame-ancestors 'none'";

/** The headers an answer of `contentType` gets (also written by hand on answers that bypass Fastify's hooks). */
export function securityHeadersFor(contentType: string): Record<string, string> {
  if (contentType.startsWith('text/html')) return { ...SECURITY_HEADERS };
  return { ...SECURITY_HEADERS, 'content-security-policy': API_CSP, 'cache-control': 'no-store' };
}

export function registerSecurityHeaders(app: FastifyInstance): void {
  app.addHook('onSend', async (_request, reply, payload) => {
    for (const [name, value] of Object.entries(securityHeadersFor(String(reply.getHeader('content-type') ?? '')))) {
      if (!reply.hasHeader(name)) void reply.header(name, value);
    }
    return payload;
  });
}
