import { z } from 'zod';

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
  /** Node's own answers to a connection (clientError): the request or its headers took too long, or too many bytes. */
  REQUEST_TIMEOUT: { status: 408, message: 'the request was not received within the time limit' },
  HEADERS_TOO_LARGE: { status: 431, message: 'the request headers are larger than the limit' },
  UNAUTHORIZED: { status: 401, message: 'a valid API key is required' },
  /** A repository load or unload while OCULAR_MODEL_CONTROL=none (Triton's default mode refuses them too). */
  MODEL_CONTROL_DISABLED: { status: 403, message: 'model control is off (OCULAR_MODEL_CONTROL=none): the repository API does not load or unload models' },
  /** A valid API key asking for what only an admin key may do (load, unload). */
  FORBIDDEN: { status: 403, message: 'this API key may not do that: an admin key is needed' },
  MODEL_NOT_FOUND: { status: 404, message: 'no model with that name is served' },
  /** A repository load that failed: 400 as Triton answers it, with the reason (the old version still serves). */
  MODEL_LOAD_FAILED: { status: 400, message: 'the model failed to load' },
  NOT_FOUND: { status: 404, message: 'no such route' },
  /** A route that exists for other methods: 405 with `Allow` listing them. */
  METHOD_NOT_ALLOWED: { status: 405, message: 'the route does not take this method' },
  BODY_TOO_LARGE: { status: 413, message: 'the request body is larger than the limit' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'the body is not an image format this server accepts' },
  /** A Content-Encoding other than gzip, deflate or identity (a body that does not decompress is INVALID_REQUEST). */
  UNSUPPORTED_CONTENT_ENCODING: { status: 415, message: 'the body\'s Content-Encoding is not one this server reads (gzip, deflate, identity)' },
  IMAGE_DECODE_FAILED: { status: 422, message: 'the image could not be decoded' },
  TOO_MANY_PIXELS: { status: 422, message: 'the image has more pixels than the limit' },
  /** An image within the pixel limit that costs more to decode than allowed (too many JPEG scans, or the decode time limit). */
  IMAGE_TOO_COMPLEX: { status: 422, message: 'the image costs more to decode than this server allows' },
  /** An answer over the response size limit (decided from the outputs' shapes and datatypes, before it is written). */
  RESPONSE_TOO_LARGE: { status: 422, message: 'the answer would be larger than the limit' },
  TOO_MANY_FILES: { status: 413, message: 'the request has more files than the limit' },
  NO_FILE: { status: 400, message: 'the multipart request has no image part' },
  CLIENT_CLOSED_REQUEST: { status: 499, message: 'the client closed the request' },
  INFERENCE_FAILED: { status: 500, message: 'inference failed' },
  INTERNAL: { status: 500, message: 'internal error' },
  QUEUE_FULL: { status: 503, message: 'the model queue is full, retry later' },
  /** The request bytes read or held across all requests would pass OCULAR_MAX_INFLIGHT_BODY_BYTES. */
  BODY_BYTES_BUSY: { status: 503, message: 'too many request body bytes are in flight, retry later' },
  /** The v2 JSON parse threads' queue is full (OCULAR_PARSE_QUEUE_SIZE). */
  PARSER_BUSY: { status: 503, message: 'the request parser is busy, retry later' },
  /** A v2 request body took longer than OCULAR_PARSE_TIMEOUT_MS to parse; its thread was replaced. */
  PARSE_TIMEOUT: { status: 413, message: 'the request body took longer than the parse time limit' },
  QUEUE_TIMEOUT: { status: 503, message: 'the request waited in the queue past its timeout and was not run' },
  MODEL_NOT_READY: { status: 503, message: 'the model is not ready' },
  DRAINING: { status: 503, message: 'the server is shutting down' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/** Seconds a client should wait before retrying a 503. */
export const RETRY_AFTER_SECONDS = 1;

/** Longest error message: whatever a message quotes from a request, the answer stays small. */
export const MAX_MESSAGE_CHARS = 1024;

/** `text`, cut to `maxChars` characters with a mark saying how long it was. */
export function capText(text: string, maxChars: number): string {
  return text.length <= maxChars ? text : `${text.slice(0, maxChars)}... (${text.length} characters)`;
}

/**
 * A short description of any value a client sent, for an error message: never recursive (a value nested 100,000
 * deep costs the same as a number), never longer than about `maxChars`. Strings are quoted and cut, arrays and
 * objects are named with their size, not walked.
 */
export function describeValue(value: unknown, maxChars = 48): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(capText(value, maxChars));
    case 'number':
    case 'boolean':
    case 'bigint':
      return capText(String(value), maxChars);
    case 'undefined':
      return 'undefined';
    case 'object':
      if (value === null) return 'null';
      if (Array.isArray(value)) return `an array of ${value.length}`;
      return 'an object';
    default:
      return `a ${typeof value}`;
  }
}

/**
 * Zod's issues as one line for a 400: the first five, each path and message cut short (a path holds the client's
 * own keys, of any length).
 */
export function issuesText(issues: readonly z.core.$ZodIssue[], root = '(root)'): string {
  return issues
    .slice(0, 5)
    .map((i) => `${capText(i.path.map(String).join('.'), 96) || root}: ${capText(i.message, 160)}`)
    .join('; ');
}

/** An absolute path (POSIX, or a file: URL's): cut to its last component wherever it appears. */
const ABSOLUTE_PATH = /(?:file:\/\/)?(?<![\w.~-])\/(?:[^\s/"'`:;,()[\]]+\/)+([^\s/"'`:;,()[\]]*)/g;
/** A native library's internals: source locations (`session.cc:123`) and C++ names (`onnxruntime::Foo::Bar()`). */
const NATIVE_INTERNALS = /\b[\w.-]+\.(?:cc|cpp|cxx|h|hpp):\d+\b|\b\w+(?:::[\w~]+)+(?:\(\))?[&*]?/g;

/**
 * A text of the server's own (a load failure, a provider's fallback) as any caller may read it: no absolute path
 * (each cut to its file name) and no native library internals. Admin keys, and the log, get the text whole.
 */
export function publicText(text: string): string {
  return text
    .replace(ABSOLUTE_PATH, (_m, last: string) => last)
    .replace(NATIVE_INTERNALS, '')
    .replace(/[ \t]{2,}/g, ' ')
    .trim();
}

export class OcularError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown }) {
    super(capText(message ?? ERROR_CATALOG[code].message, MAX_MESSAGE_CHARS), options);
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

const CODES = Object.keys(ERROR_CATALOG) as [ErrorCode, ...ErrorCode[]];

/** The body of every error outside /v2: `{ code, message }`. */
export const ErrorBodySchema = z
  .object({
    code: z.enum(CODES),
    message: z.string(),
  })
  .meta({ id: 'Error' });

/** The Open Inference Protocol's error body `{ "error": "..." }`, plus the catalog's code: every error under /v2. */
export const V2ErrorSchema = z.object({ error: z.string(), code: z.enum(CODES) }).meta({ id: 'V2Error' });

/** Edit distance (insertions, deletions, substitutions), for suggestions; both strings are short. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length] as number;
}

/**
 * The candidate closest to `given` for a "did you mean": the same ignoring case, else the one fewest edits away
 * when that is at most a third of its length (at least 2), else the shortest one it begins. Undefined when
 * nothing is that close.
 */
export function closestMatch(given: string, candidates: readonly string[]): string | undefined {
  const g = given.slice(0, 128).toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = c.toLowerCase() === g ? 0 : editDistance(g, c.toLowerCase());
    if (d < bestDistance && d <= Math.max(2, Math.floor(c.length / 3))) {
      best = c;
      bestDistance = d;
    }
  }
  // Else the shortest candidate that the given text begins (`--body-limit` for `--body-limit-bytes`).
  if (best === undefined && g.length >= 3) best = candidates.filter((c) => c.toLowerCase().startsWith(g)).sort((a, b) => a.length - b.length)[0];
  return best;
}

/** `a, b or c`, for messages that list choices (at most `max`, then how many more). */
export function listText(items: readonly string[], conjunction: 'or' | 'and' = 'or', max = 20): string {
  const shown = items.slice(0, max).map((i) => JSON.stringify(i));
  const more = items.length > max ? ` and ${items.length - max} more` : '';
  if (shown.length <= 1) return `${shown.join('')}${more}`;
  return more !== '' ? `${shown.join(', ')}${more}` : `${shown.slice(0, -1).join(', ')} ${conjunction} ${shown.at(-1) ?? ''}`;
}

/** MODEL_NOT_FOUND for `name`, naming the models that are served and the closest of them. */
export function modelNotFound(name: string, served: readonly string[]): OcularError {
  const asked = describeValue(name, 64);
  if (served.length === 0) return new OcularError('MODEL_NOT_FOUND', `no model named ${asked} is served: no model is served at all`);
  const near = closestMatch(name, served);
  const hint = near !== undefined ? `; did you mean "${near}"?` : '';
  return new OcularError('MODEL_NOT_FOUND', `no model named ${asked} is served (served: ${listText([...served].sort(), 'and')})${hint}`);
}
