/**
 * The configurations of scripts/gpu-check.sh: a ranked list read from a plain-text file (scripts/gpu-check.configs),
 * and the one-model manifest each one serves. Pure: no process is started here, so the test reads the same parser
 * and writes the same manifests as the device run.
 *
 * One configuration per line, `#` starts a comment, fields separated by whitespace, the last one the rest of the line:
 *
 *   name  base  model  device  connections  preprocess  requires  patch
 *
 * - name: the files' stem (OUT/<name>.json ...), [a-z0-9._-]
 * - base: the manifest the model entry comes from: `default` (models.manifest.json, the OCR model as shipped) or
 *   `shared` (test/fixtures/shared.manifest.json, paths rebased onto SHARED)
 * - model: the entry's name in it
 * - device: cpu, cuda, webgpu or auto (OCULAR_DEVICE, as users start the server)
 * - connections: closed-loop connections, comma-separated (one load run each, on the same server)
 * - preprocess: OCULAR_PREPROCESS_PROCESSES (auto, off or a count)
 * - requires: `-`, or `vulkan-gpu`: run only where vulkaninfo lists a GPU that is not a software one
 * - patch: JSON merged into the model entry (objects key by key, anything else replaced): every manifest field a
 *   configuration sets is written here and only here, e.g. {"input":{"uint8Input":"off"}}
 */

export const DEVICES = ['cpu', 'cuda', 'auto', 'webgpu'] as const;
export const REQUIREMENTS = ['-', 'vulkan-gpu'] as const;
export const BASES = ['default', 'shared'] as const;

export interface CheckConfig {
  name: string;
  base: (typeof BASES)[number];
  model: string;
  device: (typeof DEVICES)[number];
  connections: number[];
  preprocess: string;
  requires: (typeof REQUIREMENTS)[number];
  patch: Record<string, unknown>;
  /** 1-based line in the file, for messages. */
  line: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function oneOf<T extends string>(allowed: readonly T[], value: string, what: string, line: number): T {
  if (!(allowed as readonly string[]).includes(value)) throw new ConfigError(`line ${line}: ${what} '${value}' is not one of ${allowed.join(', ')}`);
  return value as T;
}

/** Parses the configuration file's text; throws ConfigError naming the line on anything malformed. */
export function parseConfigs(text: string): CheckConfig[] {
  const configs: CheckConfig[] = [];
  const names = new Set<string>();
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const content = raw.replace(/(^|\s)#.*$/, '').trim();
    if (content === '') return;
    const m = /^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+)$/.exec(content);
    if (m === null) throw new ConfigError(`line ${line}: expected 8 fields (name base model device connections preprocess requires patch): ${content}`);
    const [, name = '', base = '', model = '', device = '', conns = '', preprocess = '', requires = '', patchText = ''] = m;
    if (!/^[a-z0-9][a-z0-9._-]{0,80}$/.test(name)) throw new ConfigError(`line ${line}: name '${name}' must be a-z 0-9 . _ -`);
    if (names.has(name)) throw new ConfigError(`line ${line}: name '${name}' is used twice`);
    names.add(name);
    const connections = conns.split(',').map(Number);
    if (!connections.every((c) => Number.isInteger(c) && c >= 1 && c <= 4096)) throw new ConfigError(`line ${line}: connections '${conns}' must be integers 1..4096, comma-separated`);
    if (!/^(auto|off|[0-9]{1,3})$/.test(preprocess)) throw new ConfigError(`line ${line}: preprocess '${preprocess}' must be auto, off or a count`);
    let patch: unknown;
    try {
      patch = JSON.parse(patchText);
    } catch (err) {
      throw new ConfigError(`line ${line}: patch is not JSON (${(err as Error).message})`);
    }
    if (!isObject(patch)) throw new ConfigError(`line ${line}: patch must be a JSON object`);
    configs.push({
      name,
      base: oneOf(BASES, base, 'base', line),
      model,
      device: oneOf(DEVICES, device, 'device', line),
      connections,
      preprocess,
      requires: oneOf(REQUIREMENTS, requires, 'requires', line),
      patch,
      line,
    });
  });
  if (configs.length === 0) throw new ConfigError('no configuration in the file');
  return configs;
}

/** `patch` merged into `target`: objects key by key, recursively; arrays and scalars replaced. Returns a new value. */
export function mergePatch(target: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...target };
  for (const [k, v] of Object.entries(patch)) {
    const current = out[k];
    out[k] = isObject(v) && isObject(current) ? mergePatch(current, v) : v;
  }
  return out;
}

/**
 * The configuration's one-model manifest: the entry `model` of the base manifest, its relative `source` and
 * `labels` paths resolved by `resolvePath` (against the base manifest's folder, or onto SHARED), the patch merged.
 */
export function manifestFor(
  config: CheckConfig,
  base: { models: Record<string, unknown>[] },
  resolvePath: (path: string) => string,
): { models: Record<string, unknown>[] } {
  const entry = base.models.find((m) => m['name'] === config.model);
  if (entry === undefined) throw new ConfigError(`line ${config.line}: no model '${config.model}' in the ${config.base} manifest`);
  const rebase = (v: unknown, key: string): unknown => {
    if ((key === 'source' || key === 'labels') && typeof v === 'string' && !/^https?:\/\//.test(v)) return resolvePath(v);
    if (isObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rebase(x, k)]));
    return v;
  };
  return { models: [mergePatch(rebase(entry, '') as Record<string, unknown>, config.patch)] };
}

/**
 * The server's environment for a configuration (besides PORT, HOST, the manifest and the log level): the device as
 * a user names it, so that a device the server cannot use fails its start, and the run says so, rather than
 * falling back to the CPU and reporting the CPU's figures under the device's name.
 */
export function deviceEnv(config: CheckConfig): Record<string, string> {
  return { OCULAR_DEVICE: config.device, OCULAR_PREPROCESS_PROCESSES: config.preprocess };
}

/**
 * Whether `vulkaninfo --summary`'s text lists a GPU that is not a software one: a deviceType other than CPU
 * (lavapipe and SwiftShader report PHYSICAL_DEVICE_TYPE_CPU).
 */
export function vulkanHasGpu(summary: string): boolean {
  return /deviceType\s*=\s*PHYSICAL_DEVICE_TYPE_(DISCRETE_GPU|INTEGRATED_GPU|VIRTUAL_GPU)/.test(summary);
}

/** Mean and max of nvidia-smi's CSV samples (`utilization.gpu, memory.used` per line, no units), or undefined. */
export function gpuStats(csv: string): { samples: number; utilMeanPct: number; utilMaxPct: number; memMaxMiB: number } | undefined {
  const rows = csv
    .split('\n')
    .map((l) => l.split(',').map((x) => Number(x.trim())))
    .filter((r) => r.length >= 2 && r.every((x) => Number.isFinite(x)));
  if (rows.length === 0) return undefined;
  const util = rows.map((r) => r[0] as number);
  const mem = rows.map((r) => r[1] as number);
  return {
    samples: rows.length,
    utilMeanPct: Math.round((util.reduce((a, b) => a + b, 0) / util.length) * 10) / 10,
    utilMaxPct: Math.max(...util),
    memMaxMiB: Math.max(...mem),
  };
}
