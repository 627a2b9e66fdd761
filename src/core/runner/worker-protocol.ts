import type { ProviderName } from '../../config/providers.js';
import type { Outputs, TensorMeta } from '../types.js';
import type { WorkerFault } from './fault-injection.js';
import type { FeedTensor } from './feeds.js';
import type { SessionPoolOptions } from './options.js';

/**
 * The messages between a session pool and its worker threads. The parent passes a `WorkerInit` as workerData; the
 * worker answers `ready` (or `initError`), then serves `run` / `runTensors` / `hold` requests, each answered by
 * `result` or `error` with the request's id. `crash` and a `hold` released with 2 end the thread (fault tests);
 * `close` releases the session.
 */

/** A worker's session: the pool's options less what only the pool uses. */
export type WorkerInit = Pick<
  SessionPoolOptions,
  | 'modelPath'
  | 'providers'
  | 'fallbackToCpu'
  | 'gpuDeviceId'
  | 'intraOpNumThreads'
  | 'interOpNumThreads'
  | 'cpuMemArena'
  | 'normalize'
  | 'uint8Input'
  | 'inputName'
  | 'warmupDims'
  | 'nice'
> & {
  /** Whether to count nodes per provider with one profiled run (only a pool's first instance does). */
  profile: boolean;
  /** Exact (non-saturating) int8 matrix products: int8-precision.ts. */
  exactInt8: boolean;
  /** Where WebGPU may be used: the process's lock around native calls on WebGPU sessions (device-lock.ts). */
  deviceLock?: SharedArrayBuffer;
};

export type { FeedData, FeedTensor } from './feeds.js';

/** Where one image's RGB bytes lie in a run's shared slot. */
export interface SlotItem {
  byteOffset: number;
  width: number;
  height: number;
}

export type ToWorker =
  | {
      type: 'run';
      id: number;
      /** Owned by the parent's slot pool; the worker only reads it, and only until it answers this id. */
      slot: SharedArrayBuffer;
      items: SlotItem[];
      tensorHeight: number;
      tensorWidth: number;
      padValue: number;
      /** Rows of the batch tensor when more than the items (ImageBatch.padTo); outputs keep the items' rows only. */
      padTo?: number;
      /** Test hook (fault-injection.ts, injectFault): this run throws, or ends the thread, instead of running. */
      fault?: WorkerFault;
    }
  | {
      type: 'runTensors';
      id: number;
      feeds: Record<string, FeedTensor>;
      /** Rows to run when more than the feeds' dim 0 (zero rows appended to every feed); outputs keep the feeds' rows. */
      padTo?: number;
      fault?: WorkerFault;
    }
  /** flag: Int32 at index 0; the worker blocks until it is non-zero (1: answer, 2: crash). */
  | { type: 'hold'; id: number; flag: SharedArrayBuffer }
  | { type: 'crash'; code?: number }
  | { type: 'close' };

export type FromWorker =
  | {
      type: 'ready';
      provider: ProviderName;
      fallbackReason?: string;
      inputName: string;
      inputs: TensorMeta[];
      outputs: TensorMeta[];
      nodeCounts: Record<string, number>;
      /** Whether images go to this session as uint8 pixels (init.uint8Input, unless it fell back to the CPU). */
      uint8Input: boolean;
      /** Why nodeCounts is empty although profiling was asked for. */
      profileError?: string;
      /** Why the thread's priority could not be lowered as asked. */
      niceError?: string;
    }
  | { type: 'initError'; message: string }
  /** `shapes`: distinct input shapes this worker's session has run so far (shape-set.ts), this run included. */
  | { type: 'result'; id: number; outputs: Outputs; shapes: number }
  | { type: 'error'; id: number; message: string; shapes: number }
  | { type: 'held'; id: number }
  | { type: 'closed' };
