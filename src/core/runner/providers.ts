/**
 * Execution-provider choice and fallback.
 *
 * onnxruntime-node has no automatic fallback: asking for a provider whose shared library is missing makes
 * `InferenceSession.create` throw (e.g. "OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared
 * library"). So each GPU provider is tried on its own (plus 'cpu' for the nodes it does not support), which makes
 * a provider that cannot register fail at create time, and the next one, or CPU, is tried only where allowed.
 *
 * Runs on whichever thread creates sessions (the runner's worker threads).
 */
import type { Env, InferenceSession } from 'onnxruntime-common';
import type { DeviceMode, ProviderName } from '../../config/providers.js';
import { EXACT_INT8_CONFIG_KEY } from './int8-precision.js';

export interface ProviderPlan {
  /** Providers in order of preference; 'cpu', where present, is last. */
  providers: ProviderName[];
  /** Whether a CPU session may replace GPU providers that fail to register. */
  fallbackToCpu: boolean;
}

/**
 * The providers to try for a device mode. An explicit (expert) list, e.g. ['tensorrt', 'cuda', 'cpu'], is used as
 * given; a trailing 'cpu' in it is the fallback, and without one a GPU failure is fatal.
 */
export function resolveProviders(device: DeviceMode, explicit?: readonly ProviderName[]): ProviderPlan {
  if (explicit !== undefined && explicit.length > 0) {
    return { providers: [...explicit], fallbackToCpu: explicit[explicit.length - 1] === 'cpu' };
  }
  switch (device) {
    case 'auto':
      return { providers: ['cuda', 'cpu'], fallbackToCpu: true };
    case 'cuda':
      return { providers: ['cuda'], fallbackToCpu: false };
    // Every session is created as [webgpu, cpu] (createSessionWithFallback): the nodes WebGPU cannot run go to the
    // CPU provider inside the session and show in its node counts; no adapter is a failure, not a fallback.
    case 'webgpu':
      return { providers: ['webgpu'], fallbackToCpu: false };
    case 'cpu':
      return { providers: ['cpu'], fallbackToCpu: false };
  }
}

/** The manifest's `instances`: a count, or `auto` (decided once the first session's provider is known). */
export type InstancesSetting = number | 'auto';

/**
 * How many sessions (worker threads) a stage runs for `auto`, given the provider its first session got.
 *
 * - On the CPU provider, two when the CPUs (config/cpus.ts) hold two sessions' intra-op threads
 *   (2 × intraOpThreads ≤ cpus), else one. One session runs one batch at a time on its intra-op threads and
 *   leaves the rest of the machine to decoding; where inference costs more per image than decoding (a detector,
 *   OCR), that single batch is the bottleneck and a core sits half idle. A second session lets the next batch
 *   run while one is in progress. It costs a second copy of the session's memory and event-loop latency under
 *   saturation, which is why it is not the default (docs/PERFORMANCE.md, "Two sessions on the CPU").
 * - On a GPU provider, one: more sessions served no more (host preprocessing is the bound there), and each holds
 *   its own CUDA context and device memory (docs/PERFORMANCE.md, "GPU").
 */
export function resolveInstances(
  setting: InstancesSetting,
  provider: ProviderName,
  intraOpThreads: number,
  cpus: number,
): number {
  if (setting !== 'auto') return setting;
  if (provider !== 'cpu') return 1;
  return 2 * Math.max(1, intraOpThreads) <= cpus ? 2 : 1;
}

/**
 * The part of the onnxruntime-node module this file uses; the module itself satisfies it, and tests pass a wrapper
 * to see the options each `create` receives.
 */
export interface OrtApi {
  InferenceSession: {
    create(path: string, options?: InferenceSession.SessionOptions): Promise<InferenceSession>;
  };
  env: Pick<Env, 'logLevel'>;
}

export type LogSeverityLevel = 0 | 1 | 2 | 3 | 4;

export interface CreateSessionOptions {
  providers: readonly ProviderName[];
  fallbackToCpu: boolean;
  gpuDeviceId?: number;
  intraOpNumThreads?: number;
  interOpNumThreads?: number;
  graphOptimizationLevel?: InferenceSession.SessionOptions['graphOptimizationLevel'];
  enableProfiling?: boolean;
  profileFilePrefix?: string;
  /** onnxruntime's native log threshold; default 4 (fatal only) so native stderr stays quiet. */
  logSeverityLevel?: LogSeverityLevel;
  /**
   * Whether idle intra-op threads spin-wait for work (onnxruntime's default) instead of sleeping. Spinning buys a
   * few microseconds per operator when the cores are otherwise idle, and burns CPU that preprocessing needs when
   * they are not.
   */
  allowSpinning?: boolean;
  /** onnxruntime's CPU memory arena (enableCpuMemArena); absent: onnxruntime's default, on. */
  cpuMemArena?: boolean;
  /**
   * Whether onnxruntime computes int8 matrix products exactly (u8u8) instead of with its u8s8 kernels, which
   * saturate on x86 CPUs without VNNI (int8-precision.ts). Leaves float models unchanged.
   */
  exactInt8?: boolean;
  /**
   * The model the CPU provider gets, where it is tried, instead of `modelPath` (which the GPU providers get): the
   * float model where the GPU providers get the one with the uint8 prefix (uint8-prefix.ts), which gains nothing on
   * the CPU. Default `modelPath`.
   */
  cpuModelPath?: string;
}

export interface ProviderFailure {
  provider: ProviderName;
  /** onnxruntime's own error text. */
  message: string;
}

export interface CreatedSession {
  session: InferenceSession;
  /** The provider the session was created for ('cpu' after a fallback). */
  provider: ProviderName;
  /** Set when a requested GPU provider failed and another one (or CPU) took its place: onnxruntime's error text. */
  fallbackReason?: string;
  /** Every provider that failed to create a session, in the order tried. */
  failures: ProviderFailure[];
  /** The model file the session runs: `modelPath`, or `cpuModelPath` on the CPU provider. */
  modelPath: string;
}

const LOG_LEVEL_NAMES = ['verbose', 'info', 'warning', 'error', 'fatal'] as const;

function providerConfig(provider: ProviderName, gpuDeviceId: number): InferenceSession.ExecutionProviderConfig {
  switch (provider) {
    case 'cuda':
      return { name: 'cuda', deviceId: gpuDeviceId };
    case 'tensorrt':
      return { name: 'tensorrt', deviceId: gpuDeviceId };
    case 'webgpu':
      return { name: 'webgpu' };
    case 'cpu':
      return { name: 'cpu' };
  }
}

function messageOf(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).trim();
}

function describeFailures(failures: readonly ProviderFailure[]): string {
  return failures.map((f) => `${f.provider}: ${f.message}`).join('; ');
}

/**
 * Creates a session on the first requested provider that registers. GPU providers are tried in order, each as
 * [provider, 'cpu']; 'cpu' alone is tried only when no GPU provider was requested or `fallbackToCpu` allows it, so
 * a 'cpu' plan never touches a GPU provider. Throws an Error whose message carries onnxruntime's text when nothing
 * could be created.
 */
export async function createSessionWithFallback(
  ort: OrtApi,
  modelPath: string,
  opts: CreateSessionOptions,
): Promise<CreatedSession> {
  const logSeverityLevel = opts.logSeverityLevel ?? 4;
  // env.logLevel is read once per thread, by the first create; set it before that so the native default logger
  // (which prints provider-load failures to stderr) is as quiet as the sessions.
  ort.env.logLevel = LOG_LEVEL_NAMES[logSeverityLevel];

  // onnxruntime's session config entries, under their dotted keys (onnxruntime-node's `extra`).
  const config: Record<string, string> = {
    ...(opts.allowSpinning !== undefined && { 'session.intra_op.allow_spinning': opts.allowSpinning ? '1' : '0' }),
    ...(opts.exactInt8 === true && { [EXACT_INT8_CONFIG_KEY]: '1' }),
  };
  const base: InferenceSession.SessionOptions = {
    logSeverityLevel,
    ...(opts.intraOpNumThreads !== undefined && { intraOpNumThreads: opts.intraOpNumThreads }),
    ...(opts.interOpNumThreads !== undefined && { interOpNumThreads: opts.interOpNumThreads }),
    ...(opts.graphOptimizationLevel !== undefined && { graphOptimizationLevel: opts.graphOptimizationLevel }),
    ...(opts.cpuMemArena !== undefined && { enableCpuMemArena: opts.cpuMemArena }),
    ...(opts.enableProfiling !== undefined && { enableProfiling: opts.enableProfiling }),
    ...(opts.profileFilePrefix !== undefined && { profileFilePrefix: opts.profileFilePrefix }),
    ...(Object.keys(config).length > 0 && { extra: config }),
  };
  const gpuDeviceId = opts.gpuDeviceId ?? 0;
  const gpuProviders = opts.providers.filter((p) => p !== 'cpu');
  const failures: ProviderFailure[] = [];

  let lastError: unknown;
  for (const provider of gpuProviders) {
    try {
      const session = await ort.InferenceSession.create(modelPath, {
        ...base,
        executionProviders: [providerConfig(provider, gpuDeviceId), 'cpu'],
      });
      return failures.length > 0
        ? { session, provider, fallbackReason: describeFailures(failures), failures, modelPath }
        : { session, provider, failures, modelPath };
    } catch (err) {
      lastError = err;
      failures.push({ provider, message: messageOf(err) });
    }
  }

  const cpuAllowed = gpuProviders.length === 0 || opts.fallbackToCpu;
  if (!cpuAllowed) {
    throw new Error(`no requested execution provider could create a session: ${describeFailures(failures)}`, {
      cause: lastError,
    });
  }
  let session: InferenceSession;
  const cpuModelPath = opts.cpuModelPath ?? modelPath;
  try {
    session = await ort.InferenceSession.create(cpuModelPath, { ...base, executionProviders: ['cpu'] });
  } catch (err) {
    failures.push({ provider: 'cpu', message: messageOf(err) });
    throw new Error(`session creation failed: ${describeFailures(failures)}`, { cause: err });
  }
  return failures.length > 0
    ? { session, provider: 'cpu', fallbackReason: describeFailures(failures), failures, modelPath: cpuModelPath }
    : { session, provider: 'cpu', failures, modelPath: cpuModelPath };
}
