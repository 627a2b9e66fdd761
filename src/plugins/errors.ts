import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import { ERROR_CATALOG, OcularError, RETRY_AFTER_SECONDS, isRetryable, type ErrorCode } from '../errors.js';

/**
 * The one place where errors become HTTP answers. Fastify's and @fastify/multipart's own errors are mapped onto
 * the catalog so that clients only ever see catalogued codes. 4xx answers say what was wrong; 5xx answers log the
 * error and return the catalog's generic message.
 */

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

export function errorBody(err: OcularError): { code: ErrorCode; message: string } {
  return { code: err.code, message: err.status >= 500 ? ERROR_CATALOG[err.code].message : err.message };
}

export function sendError(reply: FastifyReply, err: OcularError): FastifyReply {
  if (isRetryable(err.code)) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  return reply.code(err.status).type('application/json; charset=utf-8').send(errorBody(err));
}

export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((error, request, reply) => {
    const err = toOcularError(error);
    if (err.status >= 500) request.log.error({ err: error, code: err.code }, 'request failed');
    else request.log.info({ code: err.code, msg: err.message }, 'request refused');
    return sendError(reply, err);
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, new OcularError('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]?.slice(0, 200)}`)),
  );
}
