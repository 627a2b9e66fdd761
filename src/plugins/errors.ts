import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import {
  ERROR_CATALOG,
  ErrorBodySchema,
  OcularError,
  RETRY_AFTER_SECONDS,
  V2ErrorSchema,
  isRetryable,
  type ErrorCode,
} from '../errors.js';
import { securityHeadersFor } from './security-headers.js';

/**
 * The one place where errors become HTTP answers, in the wire format of the path asked for: the Open Inference
 * Protocol's `{ "error": message, "code": CODE }` under /v2, Ocular's `{ code, message }` everywhere else
 * (errorFormatOf decides, from the URL alone). Every sender of an error goes through here: the route and 404
 * handlers, the inference lifecycle, the auth hook, a forced drain, Fastify's routing errors and Node's own
 * connection errors. Fastify's and @fastify/multipart's errors are mapped onto the catalog so that clients only
 * ever see catalogued codes. 4xx answers say what was wrong; 5xx answers log the error and return the catalog's
 * generic message.
 */

export type ErrorFormat = 'ocular' | 'oip';

export type ErrorBody = z.infer<typeof ErrorBodySchema>;
export type OipErrorBody = z.infer<typeof V2ErrorSchema>;

/** The response schema of an error in each format (for routes' declared responses). */
export const ERROR_SCHEMAS = { ocular: ErrorBodySchema, oip: V2ErrorSchema } as const;

/** The format errors of a request for `url` answer in: the protocol's for /v2 and below, Ocular's elsewhere. */
export function errorFormatOf(url: string): ErrorFormat {
  const path = url.split('?', 1)[0] ?? '';
  return path === '/v2' || path.startsWith('/v2/') ? 'oip' : 'ocular';
}

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_REQUEST',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_REQUEST',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_REQUEST',
  FST_ERR_VALIDATION: 'INVALID_PARAMETER',
  FST_REQ_FILE_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_PARTS_LIMIT: 'TOO_MANY_FILES',
  FST_FILES_LIMIT: 'TOO_MANY_FILES',
  FST_FIELDS_LIMIT: 'INVALID_REQUEST',
  FST_PROTO_VIOLATION: 'INVALID_REQUEST',
  FST_INVALID_MULTIPART_CONTENT_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
};

/** Node's clientError codes (see answerClientError); anything else it reports is a malformed request. */
const CONNECTION_CODES: Record<string, ErrorCode> = {
  ERR_HTTP_REQUEST_TIMEOUT: 'REQUEST_TIMEOUT',
  HPE_HEADER_OVERFLOW: 'HEADERS_TOO_LARGE',
};
/** The status lines of those answers (kept here: this module opens no HTTP client, so imports no node:http). */
const REASONS: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' };

/** Node's link from a socket to the response in progress on it (set by ServerResponse.assignSocket). */
type PendingResponse = { headersSent: boolean; req?: { url?: string | undefined } } | null | undefined;
const pendingResponseOf = (socket: Socket): PendingResponse => (socket as Socket & { _httpMessage?: PendingResponse })._httpMessage;

/** Maps any thrown value to a catalogued error. */
export function toOcularError(err: unknown): OcularError {
  if (err instanceof OcularError) return err;
  const fe = err as Partial<FastifyError> | undefined;
  const code = fe?.code !== undefined ? FASTIFY_CODES[fe.code] : undefined;
  if (code !== undefined) {
    // Fastify's own messages are safe and useful for 4xx (they name the limit or the bad field).
    return new OcularError(code, ERROR_CATALOG[code].status < 500 ? (fe?.message ?? undefined) : undefined, { cause: err });
  }
  if (typeof fe?.statusCode === 'number' && fe.statusCode === 413) return new OcularError('BODY_TOO_LARGE', undefined, { cause: err });
  if (typeof fe?.statusCode === 'number' && fe.statusCode === 415) return new OcularError('UNSUPPORTED_MEDIA_TYPE', undefined, { cause: err });
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new OcularError('INVALID_REQUEST', fe.message, { cause: err });
  }
  return new OcularError('INTERNAL', undefined, { cause: err });
}

/** What a client may read of an error: a 4xx says what was wrong, a 5xx only the catalog's generic message. */
function publicMessage(err: OcularError): string {
  return err.status >= 500 ? ERROR_CATALOG[err.code].message : err.message;
}

/** Ocular's error body, `{ code, message }` (also a failed file's slot in a multipart answer). */
export function errorBody(err: OcularError): ErrorBody {
  return { code: err.code, message: publicMessage(err) };
}

/** The Open Inference Protocol's error body, `{ error, code }`. */
export function oipErrorBody(err: OcularError): OipErrorBody {
  return { error: publicMessage(err), code: err.code };
}

/** The JSON text of an error's body in `format`. */
export function errorText(err: OcularError, format: ErrorFormat): string {
  return JSON.stringify(format === 'oip' ? oipErrorBody(err) : errorBody(err));
}

export const JSON_TYPE = 'application/json; charset=utf-8';

/**
 * The most of a refused request's body that is read and thrown away to keep its connection: a photo's worth. A
 * keep-alive client (a pool, autocannon) then sends its next request on the same socket instead of meeting a
 * closed one; a larger upload, or one of unknown length, closes the connection, so a refusal never costs the reading
 * of a large body.
 */
export const KEEP_ALIVE_DISCARD_BYTES = 1024 * 1024;

/**
 * Whether an answer sent now closes the connection: the request's body is still on its way (declared, and not all
 * received; injected requests, with no socket, have no `complete`) and either long (over KEEP_ALIVE_DISCARD_BYTES),
 * of unknown length (chunked), or already being read by someone. Otherwise Node reads and discards the rest of an
 * untouched body after the answer (its `_dump`) and keeps the connection.
 */
export function closesConnection(raw: FastifyRequest['raw']): boolean {
  if ((raw as { complete?: boolean }).complete !== false) return false;
  const chunked = raw.headers['transfer-encoding'] !== undefined;
  const declared = Number(raw.headers['content-length']);
  if (!chunked && !(declared > 0)) return false;
  // readableFlowing is null until something reads the body (a listener, resume, pipe): only then is the rest Node's.
  return chunked || declared > KEEP_ALIVE_DISCARD_BYTES || raw.readableFlowing !== null;
}

/**
 * Answers `err` in `format` (by default the format of the request's path), with Retry-After on a 503. An answer
 * sent before a large body, or one being read, has arrived carries `Connection: close` (closesConnection): Node
 * then ends the connection once the answer is written (lingering, plugins/lingering-close.ts), instead of reading
 * the rest of the body to keep it alive.
 */
export function sendError(reply: FastifyReply, err: OcularError, format: ErrorFormat = errorFormatOf(reply.request.url)): FastifyReply {
  // The request's span says why it was refused (plugins/tracing.ts), whichever path refused it.
  reply.request.traceSpan?.refused(err);
  if (isRetryable(err.code)) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  if (closesConnection(reply.request.raw)) void reply.header('connection', 'close');
  void reply.code(err.status).type(JSON_TYPE);
  // Ocular's body goes through the route's response schema; the protocol's is sent as text, since a v2 route may
  // declare another body for the same status (its readiness routes answer 400 `{ ready: false }`).
  return format === 'oip' ? reply.send(errorText(err, format)) : reply.send(errorBody(err));
}

/** Logs an error about to be answered: a 5xx with its cause, a refusal in one line. */
export function logError(log: FastifyRequest['log'], error: unknown, err: OcularError): void {
  if (err.status >= 500) log.error({ err: error, code: err.code }, 'request failed');
  else log.info({ code: err.code, msg: err.message }, 'request refused');
}

/** A route's URL pattern as a regular expression over a path: `:param` is one segment, `*` anything. */
function routePattern(url: string): RegExp {
  const source = url
    .split(/(:[A-Za-z0-9_]+\??|\*)/)
    .map((part) => (part === '*' ? '.*' : part.startsWith(':') ? '[^/]+' : part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${source}$`);
}

/**
 * Which methods the app's routes take for a path, from every route registered after this (the onRoute hook is
 * inherited by encapsulated contexts, so /v2's routes count too): a request for a path that exists under another
 * method is 405 with `Allow`, not 404.
 */
function createMethodIndex(app: FastifyInstance): (path: string) => string[] {
  const routes: { pattern: RegExp; methods: string[] }[] = [];
  app.addHook('onRoute', (route) => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).map(String);
    routes.push({ pattern: routePattern(route.url), methods });
  });
  return (path) => [...new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))].sort();
}

export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((error, request, reply) => {
    const err = toOcularError(error);
    logError(request.log, error, err);
    return sendError(reply, err);
  });
  const methodsOf = createMethodIndex(app);
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const allowed = methodsOf(path);
    if (allowed.length > 0 && !allowed.includes(request.method)) {
      void reply.header('allow', allowed.join(', '));
      return sendError(reply, new OcularError('METHOD_NOT_ALLOWED', `${request.method} is not allowed on ${path.slice(0, 200)}: use ${allowed.join(' or ')}`));
    }
    return sendError(reply, new OcularError('NOT_FOUND', `no route ${request.method} ${path.slice(0, 200)}`));
  });
}

/**
 * Fastify's `frameworkErrors`: errors it raises before routing (an undecodable URL, a path parameter over
 * maxParamLength), answered like any other, never in Fastify's own format (which echoes the URL and names FST_
 * codes). These replies skip the onSend hooks, so the security headers are set here.
 */
export function answerFrameworkError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const err = new OcularError(error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'INVALID_PARAMETER' : 'INVALID_REQUEST');
  request.log.info({ code: err.code, msg: error.code }, 'request refused');
  for (const [name, value] of Object.entries(securityHeadersFor(JSON_TYPE))) void reply.header(name, value);
  return sendError(reply, err);
}

/**
 * The URL of the request a connection error belongs to: the request Node already dispatched on the socket (a body
 * past the request timeout), else the request line at the start of the bytes the parser failed on (headers too
 * large or malformed). Undefined when neither is known (headers cut by the timeout before the request line).
 */
function connectionErrorUrl(err: { rawPacket?: unknown }, socket: Socket): string | undefined {
  const url = pendingResponseOf(socket)?.req?.url;
  if (url !== undefined) return url;
  if (!Buffer.isBuffer(err.rawPacket)) return undefined;
  const line = /^[A-Z]+ +(\S+) +HTTP\//.exec(err.rawPacket.subarray(0, 8192).toString('latin1'));
  return line?.[1];
}

/**
 * Responses Node dispatched on a connection and not yet finished, kept on the socket itself (it lives and dies
 * with the connection): pipelined requests are answered in order, so a 400 for a malformed request that follows
 * them must wait for their answers (answerClientError).
 */
const PENDING = Symbol('ocular.pendingResponses');
type PendingState = { count: number; idle?: () => void };
type TrackedSocket = Socket & { [PENDING]?: PendingState };

/** Counts, per connection, the responses in progress on `server` (call once per server, before it listens). */
export function trackPendingResponses(server: { on(event: 'request', fn: (req: IncomingMessage, res: ServerResponse) => void): unknown }): void {
  server.on('request', (req, res) => {
    const socket = req.socket as TrackedSocket;
    const state = (socket[PENDING] ??= { count: 0 });
    state.count++;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      state.count--;
      if (state.count === 0) state.idle?.();
    };
    res.once('finish', finish);
    res.once('close', finish);
  });
}

/** How long the answers before a malformed pipelined request may take before the connection is cut anyway. */
const PIPELINE_DRAIN_MS = 30_000;

/**
 * Fastify's `clientErrorHandler`: Node's own answers to a connection it could not turn into a request (400
 * malformed, 408 too slow, 431 headers too large), written to the socket by hand since no reply exists, in the
 * format of the path when the request line was read, with the security headers; then the connection is closed.
 *
 * Pipelining: when requests read before the malformed one are still being answered, the 400 waits for their
 * answers (Node writes them in order) and follows them, so every request that ran is answered. A request timeout
 * (408) is answered at once: the request still pending is the one that timed out; so is a connection the client
 * ended in the middle of a request.
 */
export function answerClientError(
  error: Error & { code?: string; rawPacket?: unknown },
  socket: Socket,
  log: { trace(obj: object, msg: string): void },
): void {
  // A reset connection is gone: nothing to answer.
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  log.trace({ err: error }, 'client error');
  const err = new OcularError(CONNECTION_CODES[error.code ?? ''] ?? 'INVALID_REQUEST');
  const body = errorText(err, errorFormatOf(connectionErrorUrl(error, socket) ?? ''));
  const headers: Record<string, string> = {
    'content-type': JSON_TYPE,
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
    ...securityHeadersFor(JSON_TYPE),
    ...(isRetryable(err.code) ? { 'retry-after': String(RETRY_AFTER_SECONDS) } : {}),
  };
  const head = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
  const answer = `HTTP/1.1 ${err.status} ${REASONS[err.status] ?? ''}\r\n${head}\r\n${body}`;

  const pending = (socket as TrackedSocket)[PENDING];
  // Not when the client ended the connection inside a request (HPE_INVALID_EOF_STATE: a body cut short): that request
  // is the pending one, nothing follows it, and destroying the socket now is what tells its handler the client left.
  const clientEnded = error.code === 'HPE_INVALID_EOF_STATE';
  if (error.code !== 'ERR_HTTP_REQUEST_TIMEOUT' && !clientEnded && pending !== undefined && pending.count > 0) {
    // Node reports every later chunk of the connection as another error: answer once.
    if (pending.idle !== undefined) return;
    const cut = setTimeout(() => socket.destroy(error), PIPELINE_DRAIN_MS).unref();
    pending.idle = () => {
      clearTimeout(cut);
      // Ended, not destroyed: the answers before it may still sit in the socket's buffer.
      if (socket.writable) socket.end(answer);
      else socket.destroy(error);
    };
    return;
  }
  // Part of an answer already went out on this connection: another would corrupt it.
  if (socket.writable && pendingResponseOf(socket)?.headersSent !== true) socket.write(answer);
  socket.destroy(error);
}
