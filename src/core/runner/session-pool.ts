/**
 * A pool of worker threads, one onnxruntime session each, for one model.
 *
 * Ownership: the main thread owns the pool, its queue and its shared pixel slots; each worker owns its session and
 * its batch tensor. A run is one message to one idle worker and one answer back; the worker is busy (not idle)
 * from the post until the answer, or until it dies. Callers (the batcher) normally keep at most `instances` runs in
 * flight; more wait in a FIFO queue here.
 *
 * Pixels travel in SharedArrayBuffer slots: runImages copies each item's bytes into a slot taken from a free list
 * (so the caller may reuse its buffers as soon as the call returns), the worker normalises straight out of it into
 * its own Float32Array, and the slot returns to the free list when the worker answers. Outputs come back in
 * transferred ArrayBuffers, not copies.
 *
 * A worker that dies rejects its in-flight run, is counted in `restarts`, and is replaced by a fresh one (a new
 * session), so the pool recovers.
 *
 * The pool never calls worker.terminate(): with onnxruntime-node 1.30 on Node 20, terminating a thread while it is
 * inside a native create or run aborts the whole process ("terminate called after throwing an instance of
 * 'Napi::Error'"; reproduced by scripts/spike-workers.ts --terminate hard). Workers are asked to close and end
 * themselves from JS, between native calls. A run error that reads like a broken GPU (CUDA/cuDNN failure) also goes to
 * `onFatal`: the process should exit non-zero and be restarted rather than serve from a broken device.
 */
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { availableCpus } from '../../config/cpus.js';
import { OcularError } from '../../errors.js';
import type { NormalizeParams } from '../../tasks/preprocess/normalize.js';
import type { Outputs, PreparedPixels, ProviderName, TensorMeta } from '../types.js';
import { resolveInstances, type InstancesSetting } from './providers.js';
import type { FeedData, FeedTensor, FromWorker, SlotItem, ToWorker, WorkerFault, WorkerInit } from './worker.js';

export interface PoolLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface SessionPoolOptions {
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
  inputName?: string;
  normalize: NormalizeParams;
  /** Shape of the one profiled warm-up run (node counts per provider); default the input shape with batch 1. */
  warmupDims?: number[];
  logger?: PoolLogger;
  /** Nice value for the inference threads (see thread-priority.ts); 0 or absent: unchanged. */
  nice?: number;
  /** Called with a run error that means the GPU is unusable (CUDA/cuDNN failure); main should exit non-zero. */
  onFatal?: (err: Error) => void;
}

export interface SessionInfo {
  provider: ProviderName;
  requestedProviders: ProviderName[];
  fallbackReason?: string;
  /** Distinct nodes per onnxruntime provider (e.g. CPUExecutionProvider) in one profiled run. */
  nodeCounts: Record<string, number>;
  inputs: TensorMeta[];
  outputs: TensorMeta[];
}

export interface ImageBatch {
  items: PreparedPixels[];
  tensorHeight: number;
  tensorWidth: number;
  /** Value (after normalisation) for the part of a slot an image does not cover; default 0. */
  padValue?: number;
  /**
   * Runs the session on a batch of this many rows when items are fewer (the rows past the items hold whatever the
   * worker's batch tensor held before, and their outputs are dropped in the worker): a session that only ever sees
   * one batch shape. onnxruntime's CUDA provider rebuilds its cuDNN convolution plans whenever the input dims
   * change (docs/PERFORMANCE.md, "GPU"). Default: the number of items.
   */
  padTo?: number;
}

export type TensorFeeds = Record<string, { data: FeedData; dims: number[]; type: string }>;

/** Test hook: one instance blocked inside a call, as in a long native session.run. */
export interface PoolHold {
  /** Resolves once the worker is blocked. */
  entered: Promise<void>;
  /** Settles when the held call answers (after release) or rejects (after crash). */
  done: Promise<void>;
  /** Lets the worker answer. */
  release(): void;
  /** Ends the worker thread while it is inside the call. */
  crash(): void;
}

export interface SessionPool {
  readonly info: SessionInfo;
  /** Configured number of workers (one session each). */
  readonly instances: number;
  /** Workers ready and without a run. */
  readonly idle: number;
  /** Workers replaced after they died. */
  readonly restarts: number;
  /** One batch of images; every output's dims[0] is items.length. */
  runImages(batch: ImageBatch): Promise<Outputs>;
  runTensors(feeds: TensorFeeds): Promise<Outputs>;
  hold(): PoolHold;
  /**
   * Test hook: the next run dispatched to a worker fails as if session.run threw ('throw'), or its worker thread
   * ends in the middle of it ('exit'). Reachable from code only; nothing in configuration or requests sets it.
   */
  injectFault(kind: WorkerFault): void;
  /** Waits for queued and in-flight runs, then releases the sessions and ends the workers. Idempotent. */
  close(): Promise<void>;
  /**
   * For a forced exit: starts no further run and resolves once no worker is inside one (true), or after
   * `timeoutMs` (false). process.exit() while a worker is inside session.run aborts the process: the binding
   * throws into the ending environment ("terminate called after throwing an instance of 'Napi::Error'").
   * Queued runs stay queued until close(), which refuses them (DRAINING); the pool runs nothing more.
   */
  halt(timeoutMs: number): Promise<boolean>;
}

const WORKER_URL = new URL('./worker' + extname(fileURLToPath(import.meta.url)), import.meta.url);

/**
 * Starts the worker thread. Built (dist/*.js) it is the worker file itself. From sources (tests, scripts run with
 * tsx) it is a .ts file: workers inherit `--import=tsx`, but on Node 20 tsx registers its loader on the main thread
 * only (it cannot tell a worker from Node's internal loader thread before Node 22's `isInternalThread`), so the
 * worker registers tsx itself before importing the .ts entry.
 */
function startWorker(workerData: WorkerInit): Worker {
  if (!WORKER_URL.pathname.endsWith('.ts')) return new Worker(WORKER_URL, { workerData });
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const bootstrap =
    `import(${JSON.stringify(tsxApi)})` +
    `.then((tsx) => { tsx.register(); return import(${JSON.stringify(WORKER_URL.href)}); })`;
  return new Worker(bootstrap, { eval: true, workerData });
}

/** Run errors after which the GPU context is presumed broken. */
const FATAL_GPU_ERROR = /CUDA failure|CUDNN|cudaError|CUBLAS_STATUS|CUDA error/i;

/**
 * Whether a run error means the GPU context is presumed broken (the process should restart). Quoted text is left
 * out: onnxruntime quotes the model's own names there (node, input and output names: "running Conv node.
 * Name:'conv_cudnn_1'"), and a name must not turn an ordinary error, such as a client's tensor of the wrong shape,
 * into a restart.
 */
export function isFatalGpuError(message: string): boolean {
  return FATAL_GPU_ERROR.test(message.replace(/'[^']*'/g, "''"));
}

const RESPAWN_DELAY_MS = 1000;
const RESPAWN_MAX_DELAY_MS = 30_000;
const MIN_SLOT_BYTES = 64 * 1024;

const noopLogger: PoolLogger = { info() {}, warn() {}, error() {}, debug() {} };

type Request =
  | Omit<Extract<ToWorker, { type: 'run' }>, 'id'>
  | Omit<Extract<ToWorker, { type: 'runTensors' }>, 'id'>
  | Omit<Extract<ToWorker, { type: 'hold' }>, 'id'>;

interface Job {
  request: Request;
  resolve(outputs: Outputs): void;
  reject(err: Error): void;
  /** The pixel slot this job reads, returned to the free list when the job settles. */
  slot?: SharedArrayBuffer;
  onHeld?: () => void;
}

interface WorkerHandle {
  worker: Worker;
  ready: boolean;
  job: { id: number; job: Job } | undefined;
}

type ReadyMessage = Extract<FromWorker, { type: 'ready' }>;

/**
 * Free list of shared pixel slots. Sizes are rounded up to a power of two so batches of similar size reuse each
 * other's slots; at most `maxFree` are kept.
 */
class SlotPool {
  private readonly free: SharedArrayBuffer[] = [];

  constructor(private readonly maxFree: number) {}

  acquire(bytes: number): SharedArrayBuffer {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = (this.free[i] as SharedArrayBuffer).byteLength;
      if (size >= bytes && (best < 0 || size < (this.free[best] as SharedArrayBuffer).byteLength)) best = i;
    }
    if (best >= 0) return this.free.splice(best, 1)[0] as SharedArrayBuffer;
    let size = MIN_SLOT_BYTES;
    while (size < bytes) size *= 2;
    return new SharedArrayBuffer(size);
  }

  release(slot: SharedArrayBuffer): void {
    this.free.push(slot);
    if (this.free.length > this.maxFree) {
      // Drop the smallest: the larger ones serve every batch the smaller would.
      let smallest = 0;
      for (let i = 1; i < this.free.length; i++) {
        if ((this.free[i] as SharedArrayBuffer).byteLength < (this.free[smallest] as SharedArrayBuffer).byteLength) {
          smallest = i;
        }
      }
      this.free.splice(smallest, 1);
    }
  }
}

function errorOf(message: string): Error {
  return new OcularError('INFERENCE_FAILED', message);
}

export async function createSessionPool(opts: SessionPoolOptions): Promise<SessionPool> {
  if (opts.instances !== 'auto' && (!Number.isInteger(opts.instances) || opts.instances < 1)) {
    throw new RangeError(`instances must be a positive integer or 'auto', got ${opts.instances}`);
  }
  const log = opts.logger ?? noopLogger;
  const model = opts.modelName;

  const baseInit: WorkerInit = {
    modelPath: opts.modelPath,
    providers: opts.providers,
    fallbackToCpu: opts.fallbackToCpu,
    gpuDeviceId: opts.gpuDeviceId,
    intraOpNumThreads: opts.intraOpNumThreads,
    interOpNumThreads: opts.interOpNumThreads,
    normalize: opts.normalize,
    ...(opts.inputName !== undefined && { inputName: opts.inputName }),
    ...(opts.nice !== undefined && opts.nice > 0 && { nice: opts.nice }),
    profile: false,
  };

  const handles = new Set<WorkerHandle>();
  const idleList: WorkerHandle[] = [];
  const queue: Job[] = [];
  const respawnTimers = new Set<NodeJS.Timeout>();
  let nextId = 1;
  let inFlight = 0;
  let restarts = 0;
  let closing = false;
  let closed: Promise<void> | undefined;
  let onDrained: (() => void) | undefined;
  let pendingFault: WorkerFault | undefined;
  // Every worker after the first asks for the provider the first one got, so a fallback is decided (and logged)
  // once, not once per instance.
  let init = baseInit;

  const settle = (job: Job, outcome: { outputs: Outputs } | { error: Error }): void => {
    inFlight--;
    if (job.slot !== undefined) slots.release(job.slot);
    if ('outputs' in outcome) job.resolve(outcome.outputs);
    else job.reject(outcome.error);
    if (inFlight === 0 && queue.length === 0) onDrained?.();
  };

  let halted = false;
  let onQuiet: (() => void) | undefined;
  const running = (): boolean => [...handles].some((h) => h.job !== undefined);

  const dispatch = (): void => {
    if (halted) {
      if (!running()) onQuiet?.();
      return;
    }
    while (idleList.length > 0 && queue.length > 0) {
      const handle = idleList.pop() as WorkerHandle;
      const job = queue.shift() as Job;
      const id = nextId++;
      handle.job = { id, job };
      const fault = job.request.type !== 'hold' ? pendingFault : undefined;
      if (fault !== undefined) pendingFault = undefined;
      handle.worker.postMessage({ ...job.request, id, ...(fault !== undefined && { fault }) } as ToWorker);
    }
  };

  const onMessage = (handle: WorkerHandle, msg: FromWorker): void => {
    const current = handle.job;
    switch (msg.type) {
      case 'held':
        if (current?.id === msg.id) current.job.onHeld?.();
        return;
      case 'result':
      case 'error': {
        if (current?.id !== msg.id) {
          log.warn({ model, id: msg.id }, 'worker answered a run it was not given');
          return;
        }
        handle.job = undefined;
        idleList.push(handle);
        if (msg.type === 'result') {
          settle(current.job, { outputs: msg.outputs });
        } else {
          const err = errorOf(msg.message);
          if (isFatalGpuError(msg.message)) {
            log.error({ model, err }, 'fatal gpu error');
            opts.onFatal?.(err);
          }
          settle(current.job, { error: err });
        }
        dispatch();
        return;
      }
      default:
        return;
    }
  };

  /** Starts one worker; resolves with its ready message once its session exists. */
  const spawn = (workerInit: WorkerInit): Promise<{ handle: WorkerHandle; ready: ReadyMessage }> =>
    new Promise((resolve, reject) => {
      const worker = startWorker(workerInit);
      const handle: WorkerHandle = { worker, ready: false, job: undefined };
      handles.add(handle);
      worker.on('message', (msg: FromWorker) => {
        if (handle.ready) {
          onMessage(handle, msg);
        } else if (msg.type === 'ready') {
          handle.ready = true;
          resolve({ handle, ready: msg });
        } else if (msg.type === 'initError') {
          // The worker ends itself after this message (it holds no session).
          handles.delete(handle);
          reject(new Error(`model ${model}: ${msg.message}`));
        }
      });
      worker.on('error', (err) => {
        log.error({ model, err }, 'worker error');
      });
      worker.on('exit', (code) => {
        const wasKnown = handles.delete(handle);
        const idleAt = idleList.indexOf(handle);
        if (idleAt >= 0) idleList.splice(idleAt, 1);
        if (!handle.ready) {
          reject(new Error(`model ${model}: worker exited with code ${code} before its session was ready`));
          return;
        }
        if (!wasKnown || (closing && handle.job === undefined)) return;
        const running = handle.job;
        handle.job = undefined;
        if (running !== undefined) {
          settle(running.job, { error: errorOf(`model ${model}: worker exited with code ${code} during a run`) });
        }
        // While closing, a replacement is needed only for queued runs, which close() waits for.
        if (closing && inFlight === 0) return;
        restarts++;
        log.error({ model, code, restarts, inFlight: running !== undefined }, 'worker exited, replacing it');
        respawn(0);
      });
    });

  const respawn = (attempt: number): void => {
    const delayMs = attempt === 0 ? 0 : Math.min(RESPAWN_DELAY_MS * 2 ** (attempt - 1), RESPAWN_MAX_DELAY_MS);
    const timer = setTimeout(() => {
      respawnTimers.delete(timer);
      if (closing && inFlight === 0) return;
      spawn(init).then(
        ({ handle }) => {
          if (closing && inFlight === 0) {
            void closeWorker(handle.worker);
            return;
          }
          log.info({ model, restarts }, 'worker replaced');
          idleList.push(handle);
          dispatch();
        },
        (err: unknown) => {
          log.error({ model, err, attempt }, 'worker replacement failed');
          respawn(attempt + 1);
        },
      );
    }, delayMs);
    // Not unref'd: between a worker's exit and its replacement's start this timer may be all that keeps the event
    // loop alive (a process serving only in-process requests, as tests do, would otherwise end with runs pending).
    // close() clears it.
    respawnTimers.add(timer);
  };

  // The first worker decides the provider and profiles; the others start together once it is ready. On a failure
  // every started worker is closed (not terminated: see the file comment) before the error is thrown.
  const started = await spawn({ ...baseInit, profile: true, ...(opts.warmupDims && { warmupDims: opts.warmupDims }) });
  const first = started.ready;
  idleList.push(started.handle);
  init = { ...baseInit, providers: [first.provider], fallbackToCpu: false, inputName: first.inputName };
  const instances = resolveInstances(opts.instances, first.provider, opts.intraOpNumThreads, opts.cpus ?? availableCpus());
  // Two free slots per instance. Created here, once `auto` is resolved: nothing takes a slot before the pool is
  // returned, and no run settles (settle releases slots) before one is submitted.
  const slots = new SlotPool(instances * 2);
  const rest = await Promise.allSettled(Array.from({ length: instances - 1 }, () => spawn(init)));
  const failed = rest.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) {
    closing = true;
    await Promise.all([...handles].map((h) => closeWorker(h.worker)));
    throw failed.reason;
  }
  for (const r of rest) {
    if (r.status !== 'fulfilled') continue;
    const { handle, ready } = r.value;
    if (ready.provider !== first.provider) {
      log.warn({ model, provider: ready.provider, expected: first.provider }, 'instance on another provider');
    }
    idleList.push(handle);
  }

  const info: SessionInfo = {
    provider: first.provider,
    requestedProviders: [...opts.providers],
    ...(first.fallbackReason !== undefined && { fallbackReason: first.fallbackReason }),
    nodeCounts: first.nodeCounts,
    inputs: first.inputs,
    outputs: first.outputs,
  };
  if (first.fallbackReason !== undefined) {
    log.warn(
      { model, requested: opts.providers, provider: first.provider, reason: first.fallbackReason },
      'execution provider fallback',
    );
  }
  if (first.niceError !== undefined) {
    log.warn({ model, nice: opts.nice, reason: first.niceError }, 'inference threads keep their priority');
  }
  if (first.profileError !== undefined) {
    log.warn({ model, reason: first.profileError }, 'node counts unavailable');
  }
  log.info(
    { model, provider: first.provider, instances, ...(opts.instances === 'auto' && { instancesSetting: 'auto' }), nodeCounts: first.nodeCounts },
    'session pool ready',
  );

  const submit = (request: Request, extra: Pick<Job, 'slot' | 'onHeld'> = {}): Promise<Outputs> => {
    if (closing) {
      if (extra.slot !== undefined) slots.release(extra.slot);
      return Promise.reject(new OcularError('DRAINING', `session pool of model ${model} is closed`));
    }
    return new Promise<Outputs>((resolve, reject) => {
      queue.push({ request, resolve, reject, ...extra });
      inFlight++;
      dispatch();
    });
  };

  const pool: SessionPool = {
    get info() {
      return info;
    },
    instances,
    get idle() {
      return idleList.length;
    },
    get restarts() {
      return restarts;
    },

    runImages(batch: ImageBatch): Promise<Outputs> {
      if (batch.items.length === 0) return Promise.reject(new RangeError('a batch needs at least one image'));
      let total = 0;
      for (const item of batch.items) {
        const bytes = item.width * item.height * 3;
        if (item.pixels.length < bytes) {
          return Promise.reject(
            new RangeError(`pixel buffer holds ${item.pixels.length} bytes, ${item.width}x${item.height}x3 needs ${bytes}`),
          );
        }
        total += bytes;
      }
      const slot = slots.acquire(total);
      const view = new Uint8Array(slot);
      const items: SlotItem[] = [];
      let offset = 0;
      for (const item of batch.items) {
        const bytes = item.width * item.height * 3;
        view.set(item.pixels.subarray(0, bytes), offset);
        items.push({ byteOffset: offset, width: item.width, height: item.height });
        offset += bytes;
      }
      return submit(
        {
          type: 'run',
          slot,
          items,
          tensorHeight: batch.tensorHeight,
          tensorWidth: batch.tensorWidth,
          padValue: batch.padValue ?? 0,
          ...(batch.padTo !== undefined && batch.padTo > items.length && { padTo: batch.padTo }),
        },
        { slot },
      );
    },

    runTensors(feeds: TensorFeeds): Promise<Outputs> {
      // Structured clone copies the typed arrays: the caller keeps its buffers.
      const copy: Record<string, FeedTensor> = {};
      for (const [name, feed] of Object.entries(feeds)) copy[name] = { data: feed.data, dims: feed.dims, type: feed.type };
      return submit({ type: 'runTensors', feeds: copy });
    },

    hold(): PoolHold {
      const flag = new Int32Array(new SharedArrayBuffer(4));
      let entered!: () => void;
      let failed!: (err: Error) => void;
      const enteredPromise = new Promise<void>((resolve, reject) => {
        entered = resolve;
        failed = reject;
      });
      const done = submit({ type: 'hold', flag: flag.buffer as SharedArrayBuffer }, { onHeld: () => entered() }).then(
        () => undefined,
        (err: Error) => {
          failed(err);
          throw err;
        },
      );
      // Callers may await only one of the two; neither should surface as an unhandled rejection.
      enteredPromise.catch(() => {});
      done.catch(() => {});
      const wake = (value: number): void => {
        Atomics.store(flag, 0, value);
        Atomics.notify(flag, 0);
      };
      return { entered: enteredPromise, done, release: () => wake(1), crash: () => wake(2) };
    },

    injectFault(kind: WorkerFault): void {
      pendingFault = kind;
    },

    halt(timeoutMs: number): Promise<boolean> {
      halted = true;
      if (!running()) return Promise.resolve(true);
      return new Promise<boolean>((resolve) => {
        // Not unref'd: the caller exits once this settles, and must not exit earlier by running out of work.
        const timer = setTimeout(() => resolve(false), timeoutMs);
        onQuiet = () => {
          clearTimeout(timer);
          resolve(true);
        };
      });
    },

    close(): Promise<void> {
      closed ??= (async () => {
        closing = true;
        // After halt() queued runs would never start: they are refused instead of waited for.
        if (halted) for (const job of queue.splice(0)) settle(job, { error: new OcularError('DRAINING', `session pool of model ${model} was halted`) });
        if (inFlight > 0) await new Promise<void>((resolve) => (onDrained = resolve));
        for (const timer of respawnTimers) clearTimeout(timer);
        respawnTimers.clear();
        await Promise.all([...handles].map((h) => closeWorker(h.worker)));
        log.info({ model }, 'session pool closed');
      })();
      return closed;
    },
  };
  return pool;
}

/**
 * Asks an idle worker to release its session and end, and waits for it to exit. No terminate() fallback: that
 * could land inside session.release() and abort the process (see the file comment); a worker that never ends is
 * left to the process's own shutdown deadline.
 */
function closeWorker(worker: Worker): Promise<void> {
  return new Promise<void>((resolve) => {
    if (worker.threadId < 0) {
      resolve(); // already ended
      return;
    }
    worker.once('exit', () => resolve());
    worker.postMessage({ type: 'close' } satisfies ToWorker);
  });
}
