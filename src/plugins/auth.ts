import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { OcularError } from '../errors.js';
import { ERROR_SCHEMAS, errorFormatOf, sendError } from './errors.js';

/**
 * Optional API-key auth. Off unless `OCULAR_AUTH_KEYS_FILE` names a file of keys; then every route needs a key
 * (`Authorization: Bearer <key>` or `X-API-Key: <key>`) except the probes and /metrics, each of which can be
 * put behind the key as well (`OCULAR_AUTH_PROBES`, `OCULAR_AUTH_METRICS`). Unknown paths need a key too, so an
 * anonymous client learns nothing about which routes exist.
 *
 * Keys are held only as SHA-256 digests and a presented key is hashed and compared with every one of them with
 * timingSafeEqual, without stopping at a match: the time taken depends neither on the key's content nor on which
 * key matched. A key is never logged (main.ts redacts both headers; nothing here logs one) and never echoed: a
 * missing key and a wrong key get the same 401.
 */

declare module 'fastify' {
  interface FastifyContextConfig {
    /** false: this route needs no API key even when auth is on (static files that carry no data). */
    auth?: boolean;
  }
  interface FastifyRequest {
    /** Who presented which key: null when auth is off (anonymous) or on a route open without a key. */
    caller: Caller | null;
  }
}

/** The key a request was accepted with: its id (never the key) and whether it is an admin key. */
export interface Caller {
  /** `key:` and the first 12 hex digits of the key's SHA-256: stable, safe to log, useless to an attacker. */
  id: string;
  admin: boolean;
}

/** One accepted key, held as its SHA-256 digest. */
export interface KeyDigest {
  digest: Buffer;
  admin: boolean;
}

export interface AuthOptions {
  /** The accepted keys; empty: auth is off. */
  keyDigests: readonly KeyDigest[];
  protectProbes: boolean;
  protectMetrics: boolean;
}

export class AuthConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthConfigError';
  }
}

/** The shortest key accepted: a guessable key is worse than none, because it looks like protection. */
export const MIN_KEY_LENGTH = 16;

/** Probe paths (ours and the KServe v2 ones): open unless protectProbes. */
const PROBE_PATHS = new Set(['/healthz', '/readyz', '/v2/health/live', '/v2/health/ready']);
const METRICS_PATHS = new Set(['/metrics']);

function digest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/**
 * Reads a keys file: one key per line, blank lines and lines starting with # ignored, surrounding spaces trimmed;
 * a line `admin <key>` marks an admin key, and every key of a file read with `admin` is one. Errors name the file
 * and the line number, never a key.
 */
export async function loadKeyDigests(path: string, admin = false): Promise<KeyDigest[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AuthConfigError(`cannot read the API keys file ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const digests: KeyDigest[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    let line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const marked = /^admin[ \t]+(\S.*)$/.exec(line);
    if (marked !== null) line = (marked[1] as string).trim();
    if (line.length < MIN_KEY_LENGTH) {
      throw new AuthConfigError(`API keys file ${path}, line ${i + 1}: a key needs at least ${MIN_KEY_LENGTH} characters`);
    }
    if (!/^[\x21-\x7e]+$/.test(line)) {
      throw new AuthConfigError(`API keys file ${path}, line ${i + 1}: a key is printable ASCII without spaces`);
    }
    digests.push({ digest: digest(line), admin: admin || marked !== null });
  });
  if (digests.length === 0) throw new AuthConfigError(`API keys file ${path} holds no key`);
  return digests;
}

/** The key a request presents, or undefined. */
function presentedKey(request: FastifyRequest): string | undefined {
  const authorization = request.headers.authorization;
  if (typeof authorization === 'string') {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
    if (m !== null) return m[1];
  }
  const apiKey = request.headers['x-api-key'];
  return typeof apiKey === 'string' && apiKey.length > 0 ? apiKey.trim() : undefined;
}

/** The id a key is logged under: never the key, only a short prefix of its digest. */
export function keyId(d: Buffer): string {
  return `key:${d.subarray(0, 6).toString('hex')}`;
}

/**
 * Constant-time lookup: every digest is compared, whatever matched, and the match is picked without a branch on
 * which one it was. Returns the caller the key identifies, or null.
 */
export function matchKey(key: string | undefined, digests: readonly KeyDigest[]): Caller | null {
  if (key === undefined || key.length > 4096) return null;
  const presented = digest(key);
  let found: KeyDigest | undefined;
  for (const d of digests) {
    const same = timingSafeEqual(presented, d.digest);
    found = same ? d : found;
  }
  return found === undefined ? null : { id: keyId(found.digest), admin: found.admin };
}

/** Constant-time membership: every digest is compared, whatever matched. */
export function keyMatches(key: string | undefined, digests: readonly KeyDigest[]): boolean {
  return matchKey(key, digests) !== null;
}

/** Whether the request's caller may see internals (file paths, provider failure details): an admin key only. */
export function isAdmin(request: Pick<FastifyRequest, 'caller'>): boolean {
  return request.caller?.admin === true;
}

export function registerAuth(app: FastifyInstance, opts: AuthOptions): void {
  app.decorateRequest('caller', null);
  if (opts.keyDigests.length === 0) return;
  const open = (path: string): boolean =>
    (!opts.protectProbes && PROBE_PATHS.has(path)) || (!opts.protectMetrics && METRICS_PATHS.has(path));

  // Protected routes document their 401 (OpenAPI, and the response serializer).
  app.addHook('onRoute', (route) => {
    const url = route.url;
    if (open(url) || route.config?.auth === false || route.schema === undefined || route.schema.response === undefined) return;
    const response = route.schema.response as Record<string, unknown>;
    if (response['401'] === undefined) route.schema.response = { ...response, 401: ERROR_SCHEMAS[errorFormatOf(url)] };
  });

  app.addHook('onRequest', async (request, reply) => {
    // CORS preflights carry no credentials by design; @fastify/cors answers them.
    if (request.method === 'OPTIONS') return;
    const path = request.url.split('?', 1)[0] ?? '';
    if (open(path)) {
      // Open to all; a key presented still says who asks (an admin key reads readiness reasons whole).
      const key = presentedKey(request);
      if (key !== undefined) request.caller = matchKey(key, opts.keyDigests);
      return;
    }
    // A route that serves no data opts out with `config: { auth: false }`: the playground's static files, which a
    // browser fetches by navigation and so cannot carry a key (the page then sends the key with each API call).
    if (request.routeOptions.config.auth === false) return;
    const caller = matchKey(presentedKey(request), opts.keyDigests);
    if (caller !== null) {
      request.caller = caller;
      return;
    }
    request.log.info({ code: 'UNAUTHORIZED' }, 'request refused');
    void reply.header('www-authenticate', 'Bearer realm="ocular"');
    return sendError(reply, new OcularError('UNAUTHORIZED'));
  });
}
