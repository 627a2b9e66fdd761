import { readFile } from 'node:fs/promises';
import type { Config } from '../config/config.js';
import { intraOpThreadsOf } from '../config/config.js';
import { nominalDims, type InputSpec } from '../config/input-spec.js';
import type { ProviderName } from '../config/providers.js';
import type { MemoryArenaSetting, StageEntry } from '../config/manifest.js';
import type { Logger } from './logger.js';
import type { ModelHandle } from './model-handle.js';
import { rejectUnsupportedExport } from './model-recognise.js';
import { readOnnxHeader, readOnnxInputs } from './onnx-summary.js';
import { resolveProviders } from './runner/providers.js';
import { detectVulkanDriver, type VulkanDriverReport } from './runner/vulkan-driver.js';
import { isHttpSource, resolveSource, type SourceOptions } from './source.js';
import type { Uint8Input } from './runner/options.js';
import { PrefixError, WireError } from './runner/uint8-prefix.js';
import { ITEM_PAD_VALUE, padsItems, Stage } from './stage.js';
import { decideUint8Input, prepareRegionMaskModel, prepareUint8Model } from './uint8-model.js';
import { MaskError } from './runner/region-mask.js';
import type { StageRequest } from './task-pipeline.js';
import type { Telemetry } from './telemetry.js';
import type { TensorMeta } from './types.js';
import type { BatchTracer } from './tracing.js';

/** Cap on a labels file downloaded from a URL: PaddleOCR's 6623-entry dictionary is 26 KB. */
export const LABELS_MAX_BYTES = 16 * 1024 * 1024;

export interface StageLoaderOptions {
  config: Pick<Config, 'device' | 'providers' | 'gpuDeviceId' | 'cacheDir' | 'intraOpThreads' | 'computeNice' | 'requestTimeoutMs'> &
    Partial<Pick<Config, 'sourceCaFile' | 'downloadStallMs' | 'allowHttpSources'>>;
  logger: Logger;
  telemetry: Telemetry;
  /** One span per batch, where tracing is on (core/tracing.ts). */
  batchTracer?: BatchTracer | undefined;
  /** Called on a fatal device error at run time (main exits non-zero so the orchestrator restarts the pod). */
  onFatal?: ((err: Error) => void) | undefined;
  /** Which Vulkan driver a WebGPU session runs on (runner/vulkan-driver.ts); tests pass their own. */
  detectVulkan?: () => VulkanDriverReport;
}

/**
 * Creates a model's stages for the registry: fetches and verifies the model file (source.ts), chooses the execution
 * providers (runner/providers.ts), and starts the stage's session pool. The registry owns and closes what it returns.
 */
/** The one warning of a GPU fallback: what happened and the three ways out. */
export const GPU_FALLBACK_MESSAGE =
  'no GPU execution provider could be used, models run on the CPU. For the GPU: install onnxruntime-node\'s CUDA ' +
  'provider with ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js (CUDA 12 ' +
  'and cuDNN 9 on the host) or run the GPU image ' +
  '(docker/Dockerfile, target runtime-gpu); OCULAR_DEVICE=cpu silences this';

export class StageLoader {
  /** http:// sources already warned about: once per source for the process, not at every reload. */
  private readonly httpSourcesWarned = new Set<string>();
  /** Whether the Vulkan driver under WebGPU was looked at: once for the process (every session shares it). */
  private vulkanChecked = false;
  /** Whether a GPU fallback has been warned about (once per loader: the registry's, one per process). */
  private gpuFallbackWarned = false;

  constructor(private readonly opts: StageLoaderOptions) {}

  async create(
    baseDir: string,
    handle: ModelHandle,
    field: string,
    entry: StageEntry,
    request: StageRequest,
  ): Promise<Stage> {
    const { config, logger, telemetry } = this.opts;
    const allowHttp = config.allowHttpSources === true;
    if (allowHttp && isHttpSource(entry.source) && !this.httpSourcesWarned.has(entry.source)) {
      this.httpSourcesWarned.add(entry.source);
      logger.warn(
        { model: handle.name, source: entry.source },
        'model source is plain http (allowed by OCULAR_ALLOW_HTTP_SOURCES): only its sha256 protects it',
      );
    }
    // Without the option an http:// source fails here, and the model's load error names the model and the option.
    const sourcePath = await resolveSource(entry.source, await this.sourceOptions(baseDir, entry.sha256, entry.maxDownloadBytes));
    // The file's metadata (Ultralytics names its task there), read before the session and without the graph.
    const header = request.rejectUnsupportedExports === true ? await readOnnxHeader(sourcePath).catch(() => undefined) : undefined;
    const explicit = entry.providers ?? (Array.isArray(config.providers) ? config.providers : undefined);
    const device = config.providers === 'auto' ? 'auto' : config.device;
    const plan = resolveProviders(device, explicit);
    const modelPath = await this.maskedModelOf(handle.name, field, sourcePath, plan.providers[0], request);
    const uint8Input = entry.input === undefined ? undefined : await this.uint8InputOf(handle.name, field, entry.input, modelPath, plan.providers[0], request);
    const warmupDims = request.warmupDims ?? (entry.input !== undefined ? nominalDims(entry.input, 1) : undefined);
    const arena = await this.memoryArenaOf(entry.memoryArena, modelPath, request);
    if (!arena.on) logger.debug({ model: handle.name, stage: field === '' ? 'main' : field, reason: arena.reason }, 'no CPU memory arena');
    const stage = await Stage.create({
      model: handle.name,
      stage: field === '' ? 'main' : field,
      modelPath,
      input: entry.input,
      batching: entry.batching,
      defaultTimeoutMs: config.requestTimeoutMs,
      instances: entry.instances,
      providers: plan.providers,
      fallbackToCpu: plan.fallbackToCpu,
      gpuDeviceId: config.gpuDeviceId,
      intraOpNumThreads: intraOpThreadsOf(config),
      nice: config.computeNice,
      ...(warmupDims !== undefined && { warmupDims }),
      ...(uint8Input !== undefined && { uint8Input }),
      cpuMemArena: arena.on,
      shapePolicy: request.shapePolicy,
      servesTensors: request.servesTensors,
      ...(request.sizeBuckets !== undefined && { sizeBuckets: request.sizeBuckets }),
      ...(request.minTensorWidth !== undefined && { minTensorWidth: request.minTensorWidth }),
      telemetry,
      version: handle.version,
      tracer: this.opts.batchTracer,
      logger,
      onFatal: this.opts.onFatal,
    });
    const info = stage.pool.info;
    if (request.rejectUnsupportedExports === true) {
      try {
        const facts = { inputs: info.inputs, outputs: info.outputs, ...(header !== undefined && { metadata: header.metadata }) };
        rejectUnsupportedExport(handle.name, field === '' ? 'source' : `${field}.source`, facts);
      } catch (err) {
        await stage.close();
        throw err;
      }
    }
    if (info.fallbackReason !== undefined) {
      // Once per process, with the remedy: without a GPU every stage falls back the same way, and 16 warnings of
      // one cause hide the one line that says what to do. The others are debug lines; /v1/models keeps each reason.
      const fields = { model: handle.name, stage: stage.name, requested: info.requestedProviders, provider: info.provider, reason: info.fallbackReason };
      if (this.gpuFallbackWarned) {
        logger.debug(fields, 'GPU execution provider unavailable, running on CPU');
      } else {
        this.gpuFallbackWarned = true;
        logger.warn(fields, GPU_FALLBACK_MESSAGE);
      }
    }
    if (info.provider === 'webgpu' && !this.vulkanChecked) {
      this.vulkanChecked = true;
      this.warnIfSoftwareVulkan(handle.name);
    }
    return stage;
  }

  /** How files the manifest names are fetched: the configuration's cache, extra CAs, stall limit and http:// rule. */
  private async sourceOptions(baseDir: string, sha256: string | undefined, maxBytes: number): Promise<SourceOptions> {
    const { config } = this.opts;
    return {
      baseDir,
      cacheDir: config.cacheDir,
      sha256,
      maxBytes,
      // Extra CAs (a private model store's) and the stall limit come from the configuration.
      ...(config.sourceCaFile !== undefined && { ca: await readFile(config.sourceCaFile) }),
      ...(config.downloadStallMs !== undefined && { stallTimeoutMs: config.downloadStallMs }),
      allowHttp: config.allowHttpSources === true,
    };
  }

  /**
   * A file an entry names besides its models (a labels file): a path, or a URL downloaded into the cache and checked
   * against its sha256, exactly as model sources are (source.ts); at most LABELS_MAX_BYTES.
   */
  async resolveFile(baseDir: string, source: string, sha256: string | undefined): Promise<string> {
    const opts = await this.sourceOptions(baseDir, sha256, LABELS_MAX_BYTES);
    return resolveSource(source, { ...opts, what: 'labels', cacheExtension: '.txt' });
  }

  /** A software Vulkan driver (lavapipe, SwiftShader) under WebGPU is logged as a warning: it is no GPU. */
  private warnIfSoftwareVulkan(model: string): void {
    const report = (this.opts.detectVulkan ?? detectVulkanDriver)();
    const drivers = report.active.map((icd) => icd.library);
    if (report.software) {
      this.opts.logger.warn(
        { model, vulkanDrivers: drivers, deviceNodes: report.deviceNodes },
        'WebGPU runs on a software Vulkan driver (lavapipe or SwiftShader): tens of times slower than the CPU provider',
      );
    } else {
      this.opts.logger.info({ model, vulkanDrivers: drivers, deviceNodes: report.deviceNodes }, 'WebGPU on a hardware Vulkan driver');
    }
  }

  /**
   * The model the stage runs: the source's, or, where the request asks for masked padding and size buckets may apply
   * (mode `always`, or `gpu` with a GPU provider first, as for uint8 input), the model rewritten so that a bucket's
   * padding is invisible to it (runner/region-mask.ts), cached beside the uint8 models. A model the rewrite does not
   * cover keeps its own graph, with a warning: its readings then move a little with the padding, as before.
   */
  private async maskedModelOf(model: string, field: string, sourcePath: string, firstProvider: ProviderName | undefined, request: StageRequest): Promise<string> {
    const mode = request.sizeBuckets?.mode;
    const applies = request.maskPadding === true && (mode === 'always' || (mode === 'gpu' && firstProvider !== undefined && firstProvider !== 'cpu'));
    if (!applies) return sourcePath;
    try {
      return await prepareRegionMaskModel(sourcePath, this.opts.config.cacheDir);
    } catch (err) {
      const reason = err instanceof MaskError || err instanceof WireError || err instanceof PrefixError ? err.message : `masked model not written: ${String(err)}`;
      this.opts.logger.warn({ model, stage: field === '' ? 'main' : field, reason }, 'bucket padding not masked: readings may move with it');
      return sourcePath;
    }
  }

  /**
   * Whether the stage's sessions keep onnxruntime's CPU memory arena (manifest `memoryArena`, decideMemoryArena).
   * Under `auto`, a stage that serves raw tensors has its model's declared inputs read from the file first: the
   * session option is fixed when the session is made. A file this reader cannot read keeps the arena (onnxruntime's
   * default); the session's own load then says what is wrong with it.
   */
  private async memoryArenaOf(setting: MemoryArenaSetting, modelPath: string, request: StageRequest): Promise<ArenaDecision> {
    if (setting !== 'auto' || request.servesTensors !== true) return decideMemoryArena(setting, request.servesTensors === true, []);
    try {
      return decideMemoryArena(setting, true, await readOnnxInputs(modelPath));
    } catch (err) {
      return { on: true, reason: `inputs not read (${err instanceof Error ? err.message : String(err)}): onnxruntime's default` };
    }
  }

  /**
   * The stage's uint8 input (uint8-model.ts), or undefined for float input. Where it cannot be had, the model
   * fails to load if the manifest asked for it (`always`), and keeps float input with a warning under `gpu`.
   */
  private async uint8InputOf(
    model: string,
    field: string,
    spec: InputSpec,
    modelPath: string,
    firstProvider: ProviderName | undefined,
    request: StageRequest,
  ): Promise<Uint8Input | undefined> {
    const { config, logger } = this.opts;
    const stage = field === '' ? 'main' : field;
    const decision = decideUint8Input(spec, firstProvider, padsItems(request.shapePolicy) ? ITEM_PAD_VALUE : undefined);
    if (!decision.use) {
      if (spec.uint8Input !== 'off') logger.debug({ model, stage, reason: decision.reason }, 'float input');
      return undefined;
    }
    try {
      return await prepareUint8Model(modelPath, spec, config.cacheDir, request.servesTensors === true);
    } catch (err) {
      // A float16, uint8 or batchless image input is fed in the model's own type (runner/image-feed.ts), whatever
      // uint8Input says: a uint8 model already takes the bytes, and the others have no float32 input to prefix.
      if (err instanceof PrefixError && err.ownInput) {
        logger.debug({ model, stage, reason: err.message }, "uint8 input not applied: the model's own input type is fed");
        return undefined;
      }
      // Under `gpu` (the default) a model the prefix does not fit, or a cache dir that cannot be written, costs the
      // gain only: the stage keeps float input. `always` was asked for by name, and fails the load instead.
      if (spec.uint8Input === 'always') throw err;
      const reason = err instanceof PrefixError || err instanceof WireError ? err.message : `combined model not written: ${String(err)}`;
      logger.warn({ model, stage, reason }, 'uint8 input unavailable, keeping float input');
      return undefined;
    }
  }
}

export interface ArenaDecision {
  on: boolean;
  reason: string;
}

/**
 * The CPU memory arena of a stage's sessions. onnxruntime's arena keeps the largest run's memory until the session
 * closes (docs/RELIABILITY.md, "8. Bounded work": 1.7-1.8 GiB after four [1, 3, 48, 16320] recogniser runs). Where the
 * client sets the size of a raw tensor (an input with a dynamic dimension other than the first, the batch, which the
 * manifest's maxBatchSize bounds), that largest run is the largest request the body limit lets in, so `auto` runs
 * those sessions without the arena. Image inputs are sized by the manifest, whatever the photo: the arena stays.
 */
export function decideMemoryArena(setting: MemoryArenaSetting, servesTensors: boolean, inputs: readonly TensorMeta[]): ArenaDecision {
  if (setting !== 'auto') return { on: setting === 'on', reason: `memoryArena is ${setting}` };
  if (!servesTensors) return { on: true, reason: 'the stage serves no raw tensors: its inputs are sized by the manifest' };
  const sized = inputs.find((i) => i.shape.slice(1).some((d) => d < 0));
  return sized === undefined
    ? { on: true, reason: "every raw tensor input's size is fixed by the model, but for the batch" }
    : { on: false, reason: `raw tensor input ${sized.name} [${sized.shape.join(',')}] has a size the client chooses` };
}
