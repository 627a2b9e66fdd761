import type { ProviderName } from '../../config/providers.js';
import type { Logger } from '../logger.js';
import type { TensorMeta } from '../types.js';
import type { NormalizeParams } from './normalize.js';
import type { Int8Precision } from './int8-precision.js';
import type { InstancesSetting } from './providers.js';

/**
 * The runner's options, defined once: a stage picks what it takes from here (StageOptions, core/stage.ts), the pool
 * takes them all, and each worker gets the session's part (WorkerInit, worker-protocol.ts).
 */
export interface SessionPoolOptions {
  /** For logs and errors: the model, or model/stage. */
  modelName: string;
  modelPath: string;
  providers: ProviderName[];
  fallbackToCpu: boolean;
  gpuDeviceId: number;
  /** Sessions (worker threads); `auto` is resolved from the first session's provider (resolveInstances). */
  instances: InstancesSetting;
  /** CPUs available, for `instances: auto`; default availableCpus() (the cores, capped by a cgroup CPU limit). */
  cpus?: number;
  intraOpNumThreads: number;
  interOpNumThreads: number;
  /** onnxruntime's CPU memory arena in every session of the pool (the stage loader decides: memoryArenaOf); default on. */
  cpuMemArena?: boolean;
  /** The image input; default the model's first input. */
  inputName?: string;
  /** Absent for a model served as raw tensors only: it takes no images. */
  normalize?: NormalizeParams;
  /**
   * Images go to the session as uint8 pixels, through the model with the normalisation prefix (uint8-prefix.ts) at
   * `modelPath`; `original` is the model's own image input (what the pool reports). `floatSession`: each worker also
   * holds a session of the original model (`SessionPoolOptions.modelPath`) for raw tensors, which stay float32.
   */
  uint8Input?: Uint8Input;
  /**
   * Shape of the image input in the one profiled warm-up run (node counts per provider); default the model's input
   * shape with a dynamic batch of 1.
   */
  warmupDims?: number[];
  logger?: Logger;
  /** Nice value of the inference threads and the intra-op threads onnxruntime starts (thread-priority.ts); 0 or absent: unchanged. */
  nice?: number;
  /** Whether sessions compute int8 products exactly; default decided from this CPU (detectInt8Precision). */
  int8Precision?: Int8Precision;
  /** Called with a run error that means the GPU is unusable (CUDA/cuDNN failure); main should exit non-zero. */
  onFatal?: ((err: Error) => void) | undefined;
}

export interface Uint8Input {
  modelPath: string;
  original: TensorMeta;
  floatSession: boolean;
  /** Only on a GPU provider (`uint8Input: gpu`): a session that falls back to the CPU gets the float model. */
  gpuOnly: boolean;
}
