import { parseArgs } from 'node:util';
import { z } from 'zod';
import { availableCpus } from './cpus.js';

/**
 * The only reader of process.env and argv. Everything the server can be told is one entry of OPTIONS: its
 * environment variable, its CLI flag, its schema (with default and unit), and its help line. The config is parsed
 * once at startup; a bad value stops startup with a message naming the variable or flag.
 */

const ProviderSchema = z.enum(['tensorrt', 'cuda', 'webgpu', 'cpu']);
const ImageFormatSchema = z.enum(['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif']);

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

interface OptionDef {
  env: string;
  flag: string;
  help: string;
  schema: z.ZodType;
}

const OPTIONS = {
  manifest: {
    env: 'OCULAR_MANIFEST',
    flag: 'manifest',
    help: 'path of the model manifest (JSON)',
    schema: z.string().min(1).default('./models.manifest.json'),
  },
  host: { env: 'HOST', flag: 'host', help: 'address to listen on', schema: z.string().min(1).default('0.0.0.0') },
  port: { env: 'PORT', flag: 'port', help: 'TCP port (0 = any free port)', schema: nonNegativeInt().max(65535).default(8080) },
  device: {
    env: 'OCULAR_DEVICE',
    flag: 'device',
    help: 'auto (CUDA, falling back to CPU with a warning), cuda (CUDA or fail) or cpu',
    schema: z.enum(['auto', 'cuda', 'cpu']).default('auto'),
  },
  providers: {
    env: 'OCULAR_PROVIDERS',
    flag: 'providers',
    help: 'experts: ordered execution providers from tensorrt,cuda,webgpu,cpu, or auto (= cuda,cpu); overrides --device',
    schema: z.union([z.literal('auto'), list(ProviderSchema).pipe(z.array(ProviderSchema).min(1))]).optional(),
  },
  gpuDeviceId: {
    env: 'OCULAR_GPU_DEVICE_ID',
    flag: 'gpu-device-id',
    help: 'CUDA device ordinal',
    schema: nonNegativeInt().default(0),
  },
  cacheDir: {
    env: 'OCULAR_CACHE_DIR',
    flag: 'cache-dir',
    help: 'where models fetched by URL are cached (by sha256)',
    schema: z.string().min(1).default('./.cache/models'),
  },
  logLevel: {
    env: 'OCULAR_LOG_LEVEL',
    flag: 'log-level',
    help: 'fatal, error, warn, info, debug, trace or silent',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  },
  bodyLimitBytes: {
    env: 'OCULAR_BODY_LIMIT_BYTES',
    flag: 'body-limit-bytes',
    help: 'largest request body (one image, or a whole multipart request)',
    schema: positiveInt().default(20 * 1024 * 1024),
  },
  maxInputPixels: {
    env: 'OCULAR_MAX_INPUT_PIXELS',
    flag: 'max-input-pixels',
    help: 'largest width x height of an input image, checked before decoding',
    schema: positiveInt().default(40_000_000),
  },
  maxFiles: {
    env: 'OCULAR_MAX_FILES',
    flag: 'max-files',
    help: 'most images in one multipart request',
    schema: positiveInt(1024).default(16),
  },
  imageFormats: {
    env: 'OCULAR_IMAGE_FORMATS',
    flag: 'image-formats',
    help: 'accepted image formats from jpeg,png,webp,gif,tiff,avif (SVG is never decoded)',
    schema: list(ImageFormatSchema).pipe(z.array(ImageFormatSchema).min(1)).default(['jpeg', 'png', 'webp']),
  },
  shutdownGraceMs: {
    env: 'OCULAR_SHUTDOWN_GRACE_MS',
    flag: 'shutdown-grace-ms',
    help: 'on SIGTERM/SIGINT, how long accepted work may take to finish before the process exits',
    schema: positiveInt().default(25_000),
  },
  requestTimeoutMs: {
    env: 'OCULAR_REQUEST_TIMEOUT_MS',
    flag: 'request-timeout-ms',
    help: 'default time a request may wait in a model queue before 503 QUEUE_TIMEOUT (a model may set its own)',
    schema: positiveInt().default(10_000),
  },
  intraOpThreads: {
    env: 'OCULAR_INTRA_OP_THREADS',
    flag: 'intra-op-threads',
    help: 'onnxruntime intra-op threads per session (0 = half the CPUs, at least 1; the rest decode images; CPUs: the cores, capped by a container CPU limit read from the cgroup)',
    schema: nonNegativeInt().default(0),
  },
  preprocessProcesses: {
    env: 'OCULAR_PREPROCESS_PROCESSES',
    flag: 'preprocess-processes',
    help: 'child processes that decode and resize images for classification and detection (0 = in the server process); auto = none where every model runs on the CPU, else the CPUs less 2 (one process of sharp stops scaling at a few threads)',
    schema: z.union([z.literal('auto'), nonNegativeInt().max(256)]).default('auto'),
  },
  computeNice: {
    env: 'OCULAR_COMPUTE_NICE',
    flag: 'compute-nice',
    help: 'Linux: nice value (0-19) of the threads that decode images and run inference, so that the event loop (probes, new requests) runs first on busy cores; 0 leaves them at the process priority',
    schema: nonNegativeInt().max(19).default(0),
  },
  corsOrigins: {
    env: 'OCULAR_CORS_ORIGINS',
    flag: 'cors-origins',
    help: 'comma-separated origins allowed by CORS (empty: CORS off)',
    schema: list(z.string().min(1)).default([]),
  },
  playground: {
    env: 'OCULAR_PLAYGROUND',
    flag: 'playground',
    help: 'serve the playground page at / (true or false): drop an image, see the answer drawn over it',
    schema: onOff().default(true),
  },
  authKeysFile: {
    env: 'OCULAR_AUTH_KEYS_FILE',
    flag: 'auth-keys-file',
    help: 'file of API keys, one per line (# comments; each at least 16 characters): when set, every route but the probes and /metrics needs "Authorization: Bearer <key>" or "X-API-Key: <key>"',
    schema: z.string().min(1).optional(),
  },
  authProbes: {
    env: 'OCULAR_AUTH_PROBES',
    flag: 'auth-probes',
    help: 'with an API key file, /healthz and /readyz need a key too',
    schema: onOff().default(false),
  },
  authMetrics: {
    env: 'OCULAR_AUTH_METRICS',
    flag: 'auth-metrics',
    help: 'with an API key file, /metrics needs a key too',
    schema: onOff().default(false),
  },
  sourceCaFile: {
    env: 'OCULAR_SOURCE_CA_FILE',
    flag: 'source-ca-file',
    help: 'PEM file of extra CA certificates trusted when downloading https:// model sources',
    schema: z.string().min(1).optional(),
  },
  allowHttpSources: {
    env: 'OCULAR_ALLOW_HTTP_SOURCES',
    flag: 'allow-http-sources',
    help: 'allow http:// model sources (an internal mirror; sha256 still required; a warning is logged per source)',
    schema: onOff().default(false),
  },
  downloadStallMs: {
    env: 'OCULAR_DOWNLOAD_STALL_MS',
    flag: 'download-stall-ms',
    help: 'a model download that receives nothing for this long fails',
    schema: positiveInt().default(30_000),
  },
  httpRequestTimeoutMs: {
    env: 'OCULAR_HTTP_REQUEST_TIMEOUT_MS',
    flag: 'http-request-timeout-ms',
    help: 'most time a client may take to send a whole request, headers and body; slower clients are cut off',
    schema: positiveInt().default(60_000),
  },
  httpHeadersTimeoutMs: {
    env: 'OCULAR_HTTP_HEADERS_TIMEOUT_MS',
    flag: 'http-headers-timeout-ms',
    help: 'most time a client may take to send the request headers (at most the request timeout)',
    schema: positiveInt().default(10_000),
  },
  tensorBodyLimitBytes: {
    env: 'OCULAR_TENSOR_BODY_LIMIT_BYTES',
    flag: 'tensor-body-limit-bytes',
    help: 'largest v2 inference request body (JSON tensors and binary data); large JSON is parsed off the main thread',
    schema: positiveInt().default(256 * 1024 * 1024),
  },
  manifestWatchMs: {
    env: 'OCULAR_MANIFEST_WATCH_MS',
    flag: 'manifest-watch-ms',
    help: 'how often the manifest file is checked for changes, which are then applied without downtime (0 = never; SIGHUP always works)',
    schema: nonNegativeInt().default(2000),
  },
  sharedDir: {
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
  help: boolean;
}

/**
 * Parses env and argv into a Config. CLI flags win over environment variables. Throws ConfigError naming every
 * bad variable or flag; unknown OCULAR_* variables are warnings (Kubernetes injects OCULAR_PORT and the like
 * for a Service named `ocular`).
 */
export function parseConfig(env: Readonly<Record<string, string | undefined>>, argv: readonly string[] = []): ParsedConfig {
  const flagOptions: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const def of Object.values(OPTIONS)) flagOptions[def.flag] = { type: 'string' };
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
  if (problems.length > 0) throw new ConfigError(problems);

  const known = new Set<string>([...Object.values(OPTIONS).map((d) => d.env), ...KNOWN_EXTRA_ENV]);
  const warnings = Object.keys(env)
    .filter((name) => name.startsWith('OCULAR_') && !known.has(name))
    .sort()
    .map((name) => `unknown environment variable ${name} ignored`);

  return { config: out as Config, warnings, help: flags['help'] === true };
}

/**
 * Resolved onnxruntime intra-op thread count. The default (0) is half the CPUs (the cores, capped by a container's
 * CPU limit: config/cpus.ts), at least 1: decoding and resizing
 * (sharp, on libuv's threads) cost about twice what inference does per image on the CPU (docs/PERFORMANCE.md), so
 * giving onnxruntime every core oversubscribes them; on 2 cores, 1 thread cut CPU per request by about 10 % against
 * 2 non-spinning threads and 30 % against 2 spinning ones.
 */
export function intraOpThreadsOf(config: Pick<Config, 'intraOpThreads'>): number {
  return config.intraOpThreads > 0 ? config.intraOpThreads : Math.max(1, Math.floor(availableCpus() / 2));
}

export function helpText(): string {
  const rows = Object.values(OPTIONS as Record<string, OptionDef>).map((d) => {
    const dflt = d.schema.safeParse(undefined);
    const shown = dflt.success && dflt.data !== undefined ? ` (default: ${formatDefault(dflt.data)})` : '';
    return `  --${d.flag.padEnd(20)} ${d.env.padEnd(26)} ${d.help}${shown}`;
  });
  return [
    'Usage: ocular [options]',
    '',
    'Every option can be given as a flag or as an environment variable; flags win.',
    '',
    '  flag                   variable                   meaning',
    ...rows,
    '  --help                                            print this help and exit',
    '',
  ].join('\n');
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
