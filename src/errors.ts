/**
 * The one catalog of errors Ocular answers with. Every error a client can see has a stable `code`, an HTTP
 * status and a default message; the HTTP layer maps codes to statuses here and nowhere else.
 *
 * Mapping choices:
 * - overload (queue full, queue timeout, not ready, draining) is 503 with `Retry-After`, so load balancers and
 *   clients retry elsewhere or later rather than treating it as a failure of the request itself;
 * - a body that is an image of a format we refuse is 415, an image we accept but cannot decode is 422;
 * - a client that went away gets no answer (there is nobody to answer) and is counted, not logged as an error.
 * - a missing or wrong API key is 401 with the same message either way (nothing tells a guess apart from no key).
 */
export const ERROR_CATALOG = {
  INVALID_REQUEST: { status: 400, message: 'the request is malformed' },
  INVALID_PARAMETER: { status: 400, message: 'a query parameter is invalid' },
  UNAUTHORIZED: { status: 401, message: 'a valid API key is required' },
  MODEL_NOT_FOUND: { status: 404, message: 'no model with that name is served' },
  /** A repository load that failed: 400 as Triton answers it, with the reason (the old version still serves). */
  MODEL_LOAD_FAILED: { status: 400, message: 'the model failed to load' },
  NOT_FOUND: { status: 404, message: 'no such route' },
  BODY_TOO_LARGE: { status: 413, message: 'the request body is larger than the limit' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'the body is not an image format this server accepts' },
  IMAGE_DECODE_FAILED: { status: 422, message: 'the image could not be decoded' },
  TOO_MANY_PIXELS: { status: 422, message: 'the image has more pixels than the limit' },
  TOO_MANY_FILES: { status: 413, message: 'the request has more files than the limit' },
  NO_FILE: { status: 400, message: 'the multipart request has no image part' },
  CLIENT_CLOSED_REQUEST: { status: 499, message: 'the client closed the request' },
  INFERENCE_FAILED: { status: 500, message: 'inference failed' },
  INTERNAL: { status: 500, message: 'internal error' },
  QUEUE_FULL: { status: 503, message: 'the model queue is full, retry later' },
  QUEUE_TIMEOUT: { status: 503, message: 'the request waited in the queue past its timeout and was not run' },
  MODEL_NOT_READY: { status: 503, message: 'the model is not ready' },
  DRAINING: { status: 503, message: 'the server is shutting down' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/** Seconds a client should wait before retrying a 503. */
export const RETRY_AFTER_SECONDS = 1;

export class OcularError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown }) {
    super(message ?? ERROR_CATALOG[code].message, options);
    this.name = 'OcularError';
    this.code = code;
    this.status = ERROR_CATALOG[code].status;
  }
}

export function isOcularError(err: unknown): err is OcularError {
  return err instanceof OcularError;
}

export function statusOf(code: ErrorCode): number {
  return ERROR_CATALOG[code].status;
}

/** An error answered with 503 carries Retry-After. */
export function isRetryable(code: ErrorCode): boolean {
  return statusOf(code) === 503;
}
