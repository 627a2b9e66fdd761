import { parseArgs } from 'node:util';
import { z } from 'zod';
import { availableCpus } from './cpus.js';
import { openFileLimit } from './open-files.js';
import { DEFAULT_IMAGE_FORMATS, IMAGE_FORMATS } from './image-formats.js';
import { DEVICE_MODES, PROVIDER_NAMES } from './providers.js';
import { closestMatch } from '../errors.js';

/** Ocular's version (package.json's, checked by test/config/config.test.ts): --version, /v2 and the OpenAPI info. */
export const OCULAR_VERSION = '0.1.0';

/**
 * The only reader of process.env and argv. Everything the server can be told is one entry of OPTIONS: its
 * environment variable, its CLI flag, its schema (with default and unit), and its help line. The config is parsed
 * once at startup; a bad value stops startup with a message naming the variable or flag.
 */

const ProviderSchema = z.enum(PROVIDER_NAMES);
/** The OTLP transports Ocular's exporters speak (the two the specification requires SDKs to offer). */
export const OTLP_PROTOCOLS = ['http/protobuf', 'grpc'] as const;
export type OtlpProtocol = (typeof OTLP_PROTOCOLS)[number];
const ImageFormatSchema = z.enum(IMAGE_FORMATS);

const positiveInt = (max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().positive().max(max);
const nonNegativeInt = () => z.coerce.number().int().min(0);
/** On/off: true, false, 1, 0, on, off, yes, no (case-insensitive). */
const onOff = () =>
  z.preprocess(
    (v) => (typeof v === 'string' ? v.trim().toLowerCase() : v),
    z.enum(['true', 'false', '1', '0', 'on', 'off', 'yes', 'no']).transform((v) => ['true', '1', 'on', 'yes'].includes(v)),
  );

/** A comma-separated list, trimmed, empty entries dropped. */
function list<T extends z.ZodType>(item: T) {
  return z.preprocess(
    (v) =>
      typeof v === 'string'
        ? v
            .split(',')
            .map((s) => s.trim())
            .filter((s) => s.length > 0)
        : v,
    z.array(item),
  );
}

/** The sections of --help, in order, with their titles. */
const GROUPS = {
  server: 'Server',
  models: 'Models',
  limits: 'Limits',
  security: 'Security',
  gpu: 'GPU, CPU and threads',
  observability: 'Observability',
} as const;

interface OptionDef {
  /** Its section of --help. */
  group: keyof typeof GROUPS;
  env: string;
  flag: string;
  help: string;
  schema: z.ZodType;
}

const OPTIONS = {
  manifest: {
    group: 'models',
    env: 'OCULAR_MANIFEST',
    flag: 'manifest',
    help: 'path of the model manifest (JSON)',
    schema: z.string().min(1).default('./models.manifest.json'),
  },
  host: { group: 'server', env: 'HOST', flag: 'host', help: 'address to listen on', schema: z.string().min(1).default('0.0.0.0') },
  port: { group: 'server', env: 'PORT', flag: 'port', help: 'TCP port (0 = any free port)', schema: nonNegativeInt().max(65535).default(8080) },
  device: {
    group: 'gpu',
    env: 'OCULAR_DEVICE',
    flag: 'device',
    help: 'auto (CUDA, falling back to CPU with a warning), cuda (CUDA or fail), webgpu (WebGPU over Vulkan: AMD, Intel, NVIDIA; or fail) or cpu',
    schema: z.enum(DEVICE_MODES).default('auto'),
  },
  providers: {
    group: 'gpu',
    env: 'OCULAR_PROVIDERS',
    flag: 'providers',
    help: `experts: ordered execution providers from ${PROVIDER_NAMES.join(',')}, or auto (= cuda,cpu); overrides --device`,
    schema: z.union([z.literal('auto'), list(ProviderSchema).pipe(z.array(ProviderSchema).min(1))]).optional(),
  },
  gpuDeviceId: {
    group: 'gpu',
    env: 'OCULAR_GPU_DEVICE_ID',
    flag: 'gpu-device-id',
    help: 'CUDA device ordinal',
    schema: nonNegativeInt().default(0),
  },
  cacheDir: {
    group: 'models',
    env: 'OCULAR_CACHE_DIR',
    flag: 'cache-dir',
    help: 'where models and labels fetched by URL are cached (by sha256)',
    schema: z.string().min(1).default('./.cache/models'),
  },
  logLevel: {
    group: 'observability',
    env: 'OCULAR_LOG_LEVEL',
    flag: 'log-level',
    help: 'fatal, error, warn, info, debug, trace or silent',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  },
  bodyLimitBytes: {
    group: 'limits',
    env: 'OCULAR_BODY_LIMIT_BYTES',
    flag: 'body-limit-bytes',
    help: 'largest request body (one image, or a whole multipart request)',
    schema: positiveInt().default(20 * 1024 * 1024),
  },
  maxInputPixels: {
    group: 'limits',
    env: 'OCULAR_MAX_INPUT_PIXELS',
    flag: 'max-input-pixels',
    help: 'largest width x height of an input image, checked before decoding',
    schema: positiveInt().default(40_000_000),
  },
  maxFiles: {
    group: 'limits',
    env: 'OCULAR_MAX_FILES',
    flag: 'max-files',
    help: 'most images in one multipart request',
    schema: positiveInt(1024).default(16),
  },
  maxJpegScans: {
    group: 'limits',
    env: 'OCULAR_MAX_JPEG_SCANS',
    flag: 'max-jpeg-scans',
    help: 'most scans of a JPEG, counted before decoding: each scan of a progressive JPEG is a pass over the whole image (usual encoders write at most about 20)',
    schema: positiveInt().default(100),
  },
  decodeTimeoutMs: {
    group: 'limits',
    env: 'OCULAR_DECODE_TIMEOUT_MS',
    flag: 'decode-timeout-ms',
    help: "most time one image's decode and resize may take (422 beyond; in the server, sharp's timeout, in whole seconds and checked as pixels come out, and a decode that ends past the limit anyway is refused too; a preprocessing process over it by 1 s is killed and replaced)",
    schema: positiveInt().default(10_000),
  },
  imageFormats: {
    group: 'limits',
    env: 'OCULAR_IMAGE_FORMATS',
    flag: 'image-formats',
    help: `accepted image formats from ${IMAGE_FORMATS.join(',')} (SVG is never decoded)`,
    schema: list(ImageFormatSchema).pipe(z.array(ImageFormatSchema).min(1)).default([...DEFAULT_IMAGE_FORMATS]),
  },
  shutdownGraceMs: {
    group: 'server',
    env: 'OCULAR_SHUTDOWN_GRACE_MS',
    flag: 'shutdown-grace-ms',
    help: 'on SIGTERM/SIGINT, how long accepted work may take to finish before the process exits',
    schema: positiveInt().default(25_000),
  },
  requestTimeoutMs: {
    group: 'models',
    env: 'OCULAR_REQUEST_TIMEOUT_MS',
    flag: 'request-timeout-ms',
    help: 'default time a request may wait in a model queue before 503 QUEUE_TIMEOUT (a model may set its own)',
    schema: positiveInt().default(10_000),
  },
  intraOpThreads: {
    group: 'gpu',
    env: 'OCULAR_INTRA_OP_THREADS',
    flag: 'intra-op-threads',
    help: 'onnxruntime intra-op threads per session (0 = half the CPUs, at least 1; the rest decode images; CPUs: the cores, capped by a container CPU limit read from the cgroup)',
    schema: nonNegativeInt().default(0),
  },
  preprocessProcesses: {
    group: 'gpu',
    env: 'OCULAR_PREPROCESS_PROCESSES',
    flag: 'preprocess-processes',
    help: 'child processes that decode and resize images for classification and detection (0 = in the server process); auto = none where every model runs on the CPU, else the CPUs less 2 (one process of sharp stops scaling at a few threads)',
    schema: z.union([z.literal('auto'), nonNegativeInt().max(256)]).default('auto'),
  },
  computeNice: {
    group: 'gpu',
    env: 'OCULAR_COMPUTE_NICE',
    flag: 'compute-nice',
    help: 'Linux: nice value (0-19) of the threads that decode images and run inference, so that the event loop (probes, new requests) runs first on busy cores; 0 leaves them at the process priority',
    schema: nonNegativeInt().max(19).default(0),
  },
  corsOrigins: {
    group: 'server',
    env: 'OCULAR_CORS_ORIGINS',
    flag: 'cors-origins',
    help: 'comma-separated origins allowed by CORS (empty: CORS off)',
    schema: list(z.string().min(1)).default([]),
  },
  playground: {
    group: 'server',
    env: 'OCULAR_PLAYGROUND',
    flag: 'playground',
    help: 'serve the playground page at / (true or false): drop an image, see the answer drawn over it',
    schema: onOff().default(true),
  },
  authKeysFile: {
    group: 'security',
    env: 'OCULAR_AUTH_KEYS_FILE',
    flag: 'auth-keys-file',
    help: 'file of API keys, one per line (# comments; each at least 16 characters): when set, every route but the probes and /metrics needs "Authorization: Bearer <key>" or "X-API-Key: <key>"',
    schema: z.string().min(1).optional(),
  },
  authProbes: {
    group: 'security',
    env: 'OCULAR_AUTH_PROBES',
    flag: 'auth-probes',
    help: 'with an API key file, /healthz and /readyz need a key too',
    schema: onOff().default(false),
  },
  authMetrics: {
    group: 'security',
    env: 'OCULAR_AUTH_METRICS',
    flag: 'auth-metrics',
    help: 'with an API key file, /metrics needs a key too',
    schema: onOff().default(false),
  },
  modelControl: {
    group: 'security',
    env: 'OCULAR_MODEL_CONTROL',
    flag: 'model-control',
    help: 'none: the v2 repository API refuses load and unload (403; the manifest watch and SIGHUP still reload); explicit: it may load and unload, with API keys only admin keys (as Triton\'s --model-control-mode)',
    schema: z.enum(['none', 'explicit']).default('none'),
  },
  authAdminKeysFile: {
    group: 'security',
    env: 'OCULAR_AUTH_ADMIN_KEYS_FILE',
    flag: 'auth-admin-keys-file',
    help: 'file of admin API keys (as the keys file; a line "admin <key>" in the keys file marks one too): only they may load and unload models, and only they are shown file paths and provider internals',
    schema: z.string().min(1).optional(),
  },
  sourceCaFile: {
    group: 'security',
    env: 'OCULAR_SOURCE_CA_FILE',
    flag: 'source-ca-file',
    help: 'PEM file of extra CA certificates trusted when downloading https:// model sources, added to the roots Node trusts (its own and NODE_EXTRA_CA_CERTS)',
    schema: z.string().min(1).optional(),
  },
  allowHttpSources: {
    group: 'security',
    env: 'OCULAR_ALLOW_HTTP_SOURCES',
    flag: 'allow-http-sources',
    help: 'allow http:// model sources (an internal mirror; sha256 still required; a warning is logged per source)',
    schema: onOff().default(false),
  },
  downloadStallMs: {
    group: 'models',
    env: 'OCULAR_DOWNLOAD_STALL_MS',
    flag: 'download-stall-ms',
    help: 'a model download that receives nothing for this long fails',
    schema: positiveInt().default(30_000),
  },
  httpRequestTimeoutMs: {
    group: 'server',
    env: 'OCULAR_HTTP_REQUEST_TIMEOUT_MS',
    flag: 'http-request-timeout-ms',
    help: 'most time a client may take to send a whole request, headers and body; slower clients are cut off',
    schema: positiveInt().default(60_000),
  },
  httpHeadersTimeoutMs: {
    group: 'server',
    env: 'OCULAR_HTTP_HEADERS_TIMEOUT_MS',
    flag: 'http-headers-timeout-ms',
    help: 'most time a client may take to send the request headers (at most the request timeout)',
    schema: positiveInt().default(10_000),
  },
  maxConnections: {
    group: 'server',
    env: 'OCULAR_MAX_CONNECTIONS',
    flag: 'max-connections',
    help: 'most open client connections on the main port; one more is closed as soon as it is accepted (auto = 4096, or the open-file limit less 256 where that is lower, so that the process never runs out of file descriptors)',
    schema: z.union([z.literal('auto'), positiveInt()]).default('auto'),
  },
  keepAliveTimeoutMs: {
    group: 'server',
    env: 'OCULAR_KEEP_ALIVE_TIMEOUT_MS',
    flag: 'keep-alive-timeout-ms',
    help: 'a connection with no request in progress, new or kept alive, is closed after this long; a proxy in front must close its idle connections sooner (AWS ALB and nginx: 60 s)',
    schema: positiveInt().default(65_000),
  },
  probePort: {
    group: 'observability',
    env: 'OCULAR_PROBE_PORT',
    flag: 'probe-port',
    help: 'a second TCP port serving only /healthz, /readyz, /v2/health/live and /v2/health/ready, outside the main port\'s connection cap, for the orchestrator\'s probes (unset: none; the main port serves them too)',
    schema: nonNegativeInt().max(65535).optional(),
  },
  tracing: {
    group: 'observability',
    env: 'OCULAR_TRACING',
    flag: 'tracing',
    help: 'OpenTelemetry traces exported over OTLP (true or false; unset: on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set); the SDK reads the other standard OTEL_* variables (service name, sampler, batch processor, headers, timeout)',
    schema: onOff().optional(),
  },
  otlpEndpoint: {
    group: 'observability',
    env: 'OTEL_EXPORTER_OTLP_ENDPOINT',
    flag: 'otlp-endpoint',
    help: 'OTLP collector base URL (http/protobuf: traces go to its /v1/traces); setting it turns tracing on (unset: http://localhost:4318, or :4317 for grpc, when OCULAR_TRACING=true)',
    schema: z.string().url().optional(),
  },
  otlpTracesEndpoint: {
    group: 'observability',
    env: 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
    flag: 'otlp-traces-endpoint',
    help: 'OTLP URL for traces, used as it is (wins over OTEL_EXPORTER_OTLP_ENDPOINT); setting it turns tracing on',
    schema: z.string().url().optional(),
  },
  otlpProtocol: {
    group: 'observability',
    env: 'OTEL_EXPORTER_OTLP_PROTOCOL',
    flag: 'otlp-protocol',
    help: 'OTLP transport: http/protobuf or grpc (http/json is not supported)',
    schema: z.enum(OTLP_PROTOCOLS).default('http/protobuf'),
  },
  otlpTracesProtocol: {
    group: 'observability',
    env: 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL',
    flag: 'otlp-traces-protocol',
    help: 'OTLP transport for traces, winning over OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf or grpc',
    schema: z.enum(OTLP_PROTOCOLS).optional(),
  },
  grpcPort: {
    group: 'server',
    env: 'OCULAR_GRPC_PORT',
    flag: 'grpc-port',
    help: 'TCP port of the Open Inference Protocol over gRPC (GRPCInferenceService, grpc.health.v1, reflection), with the same models, limits, keys and connection cap as HTTP (0 or off: no gRPC)',
    schema: z.preprocess((v) => (typeof v === 'string' && v.trim().toLowerCase() === 'off' ? 0 : v), nonNegativeInt().max(65535)).default(8081),
  },
  grpcTlsCertFile: {
    group: 'security',
    env: 'OCULAR_GRPC_TLS_CERT_FILE',
    flag: 'grpc-tls-cert-file',
    help: 'PEM certificate chain for TLS on the gRPC port (with OCULAR_GRPC_TLS_KEY_FILE; unset: plaintext, for a mesh or proxy that terminates TLS)',
    schema: z.string().min(1).optional(),
  },
  grpcTlsKeyFile: {
    group: 'security',
    env: 'OCULAR_GRPC_TLS_KEY_FILE',
    flag: 'grpc-tls-key-file',
    help: 'PEM private key for TLS on the gRPC port (with OCULAR_GRPC_TLS_CERT_FILE)',
    schema: z.string().min(1).optional(),
  },
  tensorBodyLimitBytes: {
    group: 'limits',
    env: 'OCULAR_TENSOR_BODY_LIMIT_BYTES',
    flag: 'tensor-body-limit-bytes',
    help: 'largest v2 inference request body (JSON tensors and binary data); bodies over 64 KiB are parsed off the main thread',
    schema: positiveInt().default(256 * 1024 * 1024),
  },
  maxInflightBodyBytes: {
    group: 'limits',
    env: 'OCULAR_MAX_INFLIGHT_BODY_BYTES',
    flag: 'max-inflight-body-bytes',
    help: 'most request body bytes read or held at once across all requests (503 BODY_BYTES_BUSY past it, decided from Content-Length before reading); the default leaves a 4 GiB pod room for two bodies at the tensor body limit and what parsing them makes',
    schema: positiveInt().default(512 * 1024 * 1024),
  },
  parseThreads: {
    group: 'gpu',
    env: 'OCULAR_PARSE_THREADS',
    flag: 'parse-threads',
    help: 'worker threads that parse v2 bodies over 64 KiB, JSON or binary (0 = the CPUs less 1, from 1 to 4), so that one large body does not hold up the others',
    schema: nonNegativeInt().max(64).default(0),
  },
  postprocessThreads: {
    group: 'gpu',
    env: 'OCULAR_POSTPROCESS_THREADS',
    flag: 'postprocess-threads',
    help: "worker threads that build segmentation masks at the image's size (upsampling, RLE, PNG), off the main thread (0 = the CPUs less 1, from 1 to 4); they start on first use",
    schema: nonNegativeInt().max(64).default(0),
  },
  parseQueueSize: {
    group: 'limits',
    env: 'OCULAR_PARSE_QUEUE_SIZE',
    flag: 'parse-queue-size',
    help: 'v2 bodies over 64 KiB waiting for a parse thread; past it 503 PARSER_BUSY (each waiting body is held in memory)',
    schema: nonNegativeInt().default(16),
  },
  parseTimeoutMs: {
    group: 'limits',
    env: 'OCULAR_PARSE_TIMEOUT_MS',
    flag: 'parse-timeout-ms',
    help: 'most time one v2 body may take to parse; past it the thread is replaced and the request answered 413 PARSE_TIMEOUT',
    schema: positiveInt().default(10_000),
  },
  maxResponseBytes: {
    group: 'limits',
    env: 'OCULAR_MAX_RESPONSE_BYTES',
    flag: 'max-response-bytes',
    help: "largest v2 inference answer, bounded from the outputs' shapes and datatypes before it is written (JSON: up to 25 bytes per float value; binary: exact, 4 per FP32); 422 beyond. Answers over 1 MiB are streamed as the client reads. Segmentation masks (/v1 and v2) are counted as they are built, across a request's images",
    schema: positiveInt().default(64 * 1024 * 1024),
  },
  responseWriteTimeoutMs: {
    group: 'server',
    env: 'OCULAR_RESPONSE_WRITE_TIMEOUT_MS',
    flag: 'response-write-timeout-ms',
    help: 'a client that reads nothing of its answer for this long is disconnected and the answer dropped',
    schema: positiveInt().default(30_000),
  },
  manifestWatchMs: {
    group: 'models',
    env: 'OCULAR_MANIFEST_WATCH_MS',
    flag: 'manifest-watch-ms',
    help: 'how often the manifest file is checked for changes, which are then applied without downtime (0 = never; SIGHUP always works)',
    schema: nonNegativeInt().default(2000),
  },
  sharedDir: {
    group: 'models',
    env: 'OCULAR_SHARED_DIR',
    flag: 'shared-dir',
    help: 'tests and benchmarks only: where the shared models and photos are',
    schema: z.string().min(1).default('../shared'),
  },
} as const satisfies Record<string, OptionDef>;

type OptionKey = keyof typeof OPTIONS;

export type Config = { [K in OptionKey]: z.output<(typeof OPTIONS)[K]['schema']> };

/** Environment variables that are read but are not options (they belong to Node, npm or the test harness). */
const KNOWN_EXTRA_ENV = new Set(['OCULAR_REQUIRE_SHARED']);

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

export interface ParsedConfig {
  config: Config;
  warnings: string[];
  /** --help or -h: print helpText() and exit. */
  help: boolean;
  /** --version: print OCULAR_VERSION and exit. */
  version: boolean;
}

/** Flags that are not options. */
const META_FLAGS = ['help', 'version'];

/**
 * Refuses a flag that is no option before parseArgs does (its message suggests nothing), with the closest flag:
 * `unknown option --prot: did you mean --port?`.
 */
function checkFlagNames(argv: readonly string[], flags: readonly string[]): void {
  for (const arg of argv) {
    if (arg === '--') return;
    if (arg === '-h' || !arg.startsWith('--')) continue;
    const name = arg.slice(2).split('=', 1)[0] ?? '';
    if (flags.includes(name)) continue;
    const near = closestMatch(name, flags);
    const shown = JSON.stringify(arg.length > 64 ? `${arg.slice(0, 64)}...` : arg).slice(1, -1);
    throw new ConfigError([`unknown option ${shown}${near !== undefined ? `: did you mean --${near}?` : ''}`]);
  }
}

/**
 * Parses env and argv into a Config. CLI flags win over environment variables. Throws ConfigError naming every
 * bad variable or flag; unknown OCULAR_* variables are warnings (Kubernetes injects OCULAR_PORT and the like
 * for a Service named `ocular`).
 */
export function parseConfig(env: Readonly<Record<string, string | undefined>>, argv: readonly string[] = []): ParsedConfig {
  const flagOptions: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
  };
  for (const def of Object.values(OPTIONS)) flagOptions[def.flag] = { type: 'string' };
  checkFlagNames(argv, [...Object.values(OPTIONS).map((d) => d.flag), ...META_FLAGS]);
  let flags: Record<string, string | boolean | undefined>;
  try {
    flags = parseArgs({ args: [...argv], options: flagOptions, strict: true, allowPositionals: false }).values as Record<
      string,
      string | boolean | undefined
    >;
  } catch (err) {
    throw new ConfigError([(err as Error).message]);
  }

  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  for (const [key, def] of Object.entries(OPTIONS) as [OptionKey, OptionDef][]) {
    const fromFlag = flags[def.flag];
    const raw = typeof fromFlag === 'string' ? fromFlag : env[def.env];
    const origin = typeof fromFlag === 'string' ? `--${def.flag}` : def.env;
    // Empty or blank counts as unset: z.coerce.number would read ' ' as 0 (PORT=' ' would pick a random port).
    const parsed = def.schema.safeParse(raw === undefined || raw.trim() === '' ? undefined : raw);
    if (parsed.success) out[key] = parsed.data;
    else problems.push(`${origin}=${JSON.stringify(raw)}: ${parsed.error.issues.map((i) => i.message).join('; ')}`);
  }
  const grpcPort = out['grpcPort'];
  if (grpcPort !== 0 && grpcPort !== undefined) {
    if (grpcPort === out['port'] && grpcPort !== undefined) problems.push(`OCULAR_GRPC_PORT=${String(grpcPort)} is also PORT: give gRPC a port of its own, or turn it off (0 or off)`);
    if (grpcPort === out['probePort']) problems.push(`OCULAR_GRPC_PORT=${String(grpcPort)} is also OCULAR_PROBE_PORT: give gRPC a port of its own, or turn it off (0 or off)`);
  }
  if ((out['grpcTlsCertFile'] === undefined) !== (out['grpcTlsKeyFile'] === undefined)) {
    problems.push('OCULAR_GRPC_TLS_CERT_FILE and OCULAR_GRPC_TLS_KEY_FILE go together: set both for TLS on the gRPC port, or neither');
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const known = new Set<string>([...Object.values(OPTIONS).map((d) => d.env), ...KNOWN_EXTRA_ENV]);
  const warnings = Object.keys(env)
    .filter((name) => name.startsWith('OCULAR_') && !known.has(name))
    .sort()
    .map((name) => `unknown environment variable ${name} ignored`);

  return { config: out as Config, warnings, help: flags['help'] === true, version: flags['version'] === true };
}

/**
 * Resolved onnxruntime intra-op thread count. The default (0) is half the CPUs (the cores, capped by a container's
 * CPU limit: config/cpus.ts), at least 1: decoding and resizing (sharp, on libuv's threads) cost more than inference
 * per image on the CPU, so giving onnxruntime every core oversubscribes them (docs/PERFORMANCE.md).
 */
/**
 * Node's own NODE_EXTRA_CA_CERTS (not an Ocular option: Node reads it at startup and it is not in OPTIONS). Read
 * here, the only reader of process.env, for core/source.ts, which on Node < 22.15 rebuilds the roots Node trusts
 * in order to add OCULAR_SOURCE_CA_FILE's certificates to them.
 */
export function nodeExtraCaCertsFile(): string | undefined {
  const file = process.env['NODE_EXTRA_CA_CERTS'];
  return file !== undefined && file !== '' ? file : undefined;
}

export function intraOpThreadsOf(config: Pick<Config, 'intraOpThreads'>): number {
  return config.intraOpThreads > 0 ? config.intraOpThreads : Math.max(1, Math.floor(availableCpus() / 2));
}

/** Below the open-file limit, descriptors kept for everything but client connections (models, workers, pipes, probes). */
const RESERVED_FILE_DESCRIPTORS = 256;
/** The cap where the open-file limit allows more: idle connections cost memory (docs/RELIABILITY.md). */
const DEFAULT_MAX_CONNECTIONS = 4096;

/**
 * Resolved connection cap. `auto` keeps the cap under the process's open-file limit (read from /proc/self/limits
 * after Node raised the soft limit to the hard one): past that limit accepts fail with EMFILE and libuv closes
 * every new connection, the probe listener's included.
 */
export function maxConnectionsOf(config: Pick<Config, 'maxConnections'>, fileLimit = openFileLimit()): number {
  if (config.maxConnections !== 'auto') return config.maxConnections;
  if (fileLimit === undefined) return DEFAULT_MAX_CONNECTIONS;
  return Math.max(16, Math.min(DEFAULT_MAX_CONNECTIONS, fileLimit - RESERVED_FILE_DESCRIPTORS));
}

/** Where and how traces are exported, once resolved from the OTLP options (plugins/tracing.ts). */
export interface TracingConfig {
  protocol: OtlpProtocol;
  /** The exporter's URL: the traces endpoint as given, else the base endpoint (plus /v1/traces over HTTP). */
  url: string;
}

/**
 * Tracing's settings, or undefined when tracing is off: OCULAR_TRACING decides where it is set, else an OTLP
 * endpoint variable turns it on (as OpenTelemetry's zero-code agents do). URLs as the OTLP exporter specification
 * resolves them: the signal's own endpoint as it is, the base one with `v1/traces` appended over HTTP.
 */
export function tracingOf(
  config: Pick<Config, 'tracing' | 'otlpEndpoint' | 'otlpTracesEndpoint' | 'otlpProtocol' | 'otlpTracesProtocol'>,
): TracingConfig | undefined {
  const enabled = config.tracing ?? (config.otlpEndpoint !== undefined || config.otlpTracesEndpoint !== undefined);
  if (!enabled) return undefined;
  const protocol = config.otlpTracesProtocol ?? config.otlpProtocol;
  if (config.otlpTracesEndpoint !== undefined) return { protocol, url: config.otlpTracesEndpoint };
  const base = config.otlpEndpoint ?? (protocol === 'grpc' ? 'http://localhost:4317' : 'http://localhost:4318');
  return { protocol, url: protocol === 'grpc' ? base : `${base.endsWith('/') ? base : `${base}/`}v1/traces` };
}

/** Resolved v2 parse thread count: the configured one, else the CPUs less one (the event loop's), from 1 to 4. */
export function parseThreadsOf(config: Pick<Config, 'parseThreads'>): number {
  return config.parseThreads > 0 ? config.parseThreads : Math.min(4, Math.max(1, availableCpus() - 1));
}

export function postprocessThreadsOf(config: Pick<Config, 'postprocessThreads'>): number {
  return config.postprocessThreads > 0 ? config.postprocessThreads : Math.min(4, Math.max(1, availableCpus() - 1));
}

/** Width of --help: every line fits 100 columns. */
const HELP_WIDTH = 100;

/** `text` as lines of at most `width` characters, each starting with `indent`. */
function wrap(text: string, indent: string, width = HELP_WIDTH): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line !== '' && indent.length + line.length + 1 + word.length > width) {
      lines.push(indent + line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(indent + line);
  return lines;
}

/**
 * --help: usage, examples, then the options by section, each as its flag, variable and default on one line and
 * its meaning wrapped below, all within 100 columns.
 */
export function helpText(): string {
  const out = [
    'Usage: node dist/src/main.js [options]      (npm start -- [options])',
    '',
    ...wrap('Ocular serves the ONNX models of a manifest over HTTP. Every option is a flag or an environment variable; flags win.', ''),
    '',
    'Examples:',
    '  npm start                                        the default manifest, http://localhost:8080',
    '  npm start -- --manifest models/models.manifest.json --port 9000',
    '  OCULAR_DEVICE=cpu OCULAR_LOG_LEVEL=debug npm start',
  ];
  for (const [group, title] of Object.entries(GROUPS)) {
    out.push('', `${title}:`);
    for (const d of Object.values(OPTIONS as Record<string, OptionDef>).filter((o) => o.group === group)) {
      const dflt = d.schema.safeParse(undefined);
      const shown = dflt.success && dflt.data !== undefined ? `  (default: ${formatDefault(dflt.data)})` : '';
      out.push(`  --${d.flag}, ${d.env}${shown}`, ...wrap(d.help, '      '));
    }
  }
  out.push('', 'Other:', '  -h, --help       print this help and exit', '  --version        print the version and exit', '');
  return out.join('\n');
}

function formatDefault(v: unknown): string {
  if (Array.isArray(v)) return v.length === 0 ? 'none' : v.join(',');
  return String(v);
}

/** Rows for the README's configuration table: [variable, flag, default, meaning]. */
export function optionTable(): [string, string, string, string][] {
  return Object.values(OPTIONS as Record<string, OptionDef>).map((d) => {
    const dflt = d.schema.safeParse(undefined);
    return [d.env, `--${d.flag}`, dflt.success && dflt.data !== undefined ? formatDefault(dflt.data) : '', d.help];
  });
}
