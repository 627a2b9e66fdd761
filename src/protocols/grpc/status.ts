import { status as GrpcStatus, Metadata, type StatusObject } from '@grpc/grpc-js';
import { ERROR_CATALOG, RETRY_AFTER_SECONDS, isRetryable, type ErrorCode, type OcularError } from '../../errors.js';

/**
 * The error catalog's codes as gRPC status codes: the one place they are mapped. Chosen after what each HTTP
 * status means, and where gRPC has a closer word, that word:
 * - 400, 415 and the 422 image refusals: INVALID_ARGUMENT (the request itself is wrong, retrying will not help);
 * - 401: UNAUTHENTICATED; 403: PERMISSION_DENIED; 404: NOT_FOUND; 499: CANCELLED; 500: INTERNAL;
 * - 413 and RESPONSE_TOO_LARGE: RESOURCE_EXHAUSTED (a size limit; grpc-js answers the same for a message over
 *   the receive limit, before decoding it);
 * - a full queue or busy byte budget (QUEUE_FULL, BODY_BYTES_BUSY, PARSER_BUSY): RESOURCE_EXHAUSTED, retryable;
 * - not ready, draining, a queue timeout: UNAVAILABLE, the code gRPC clients' retry policies retry on.
 * Every error answered 503 over HTTP (isRetryable) carries the retry hint in the trailing metadata:
 * `retry-after` in seconds, as HTTP's header, and gRPC's server pushback `grpc-retry-pushback-ms` (gRFC A6).
 * The catalog code travels too, as `ocular-error-code`. A client's deadline is gRPC's own: the call ends
 * DEADLINE_EXCEEDED (from grpc-js) and its queued work is dropped as a departed client's.
 */

const BY_CODE: Partial<Record<ErrorCode, GrpcStatus>> = {
  RESPONSE_TOO_LARGE: GrpcStatus.RESOURCE_EXHAUSTED,
  QUEUE_FULL: GrpcStatus.RESOURCE_EXHAUSTED,
  BODY_BYTES_BUSY: GrpcStatus.RESOURCE_EXHAUSTED,
  PARSER_BUSY: GrpcStatus.RESOURCE_EXHAUSTED,
  PARSE_TIMEOUT: GrpcStatus.RESOURCE_EXHAUSTED,
};

const BY_STATUS: Record<number, GrpcStatus> = {
  400: GrpcStatus.INVALID_ARGUMENT,
  401: GrpcStatus.UNAUTHENTICATED,
  403: GrpcStatus.PERMISSION_DENIED,
  404: GrpcStatus.NOT_FOUND,
  405: GrpcStatus.UNIMPLEMENTED,
  408: GrpcStatus.DEADLINE_EXCEEDED,
  413: GrpcStatus.RESOURCE_EXHAUSTED,
  415: GrpcStatus.INVALID_ARGUMENT,
  422: GrpcStatus.INVALID_ARGUMENT,
  431: GrpcStatus.RESOURCE_EXHAUSTED,
  499: GrpcStatus.CANCELLED,
  500: GrpcStatus.INTERNAL,
  503: GrpcStatus.UNAVAILABLE,
};

export function grpcCodeOf(code: ErrorCode): GrpcStatus {
  return BY_CODE[code] ?? BY_STATUS[ERROR_CATALOG[code].status] ?? GrpcStatus.UNKNOWN;
}

/** The status a catalogued error is answered with: its gRPC code, its message (generic for a 5xx), the hints. */
export function grpcStatusOf(err: OcularError): Partial<StatusObject> & { code: GrpcStatus } {
  const metadata = new Metadata();
  metadata.set('ocular-error-code', err.code);
  if (isRetryable(err.code)) {
    metadata.set('retry-after', String(RETRY_AFTER_SECONDS));
    metadata.set('grpc-retry-pushback-ms', String(RETRY_AFTER_SECONDS * 1000));
  }
  // As over HTTP: a 4xx says what was wrong, a 5xx only the catalog's generic message.
  const details = err.status >= 500 ? ERROR_CATALOG[err.code].message : err.message;
  return { code: grpcCodeOf(err.code), details, metadata };
}
