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
 * its own Float32Array, and the slot returns to the free list when the worker answers. Raw tensors go to the worker
 * in transferred ArrayBuffers (runTensors takes its feeds' buffers), and outputs come back the same way: no copy on
 * the main thread either way.
 *
 * A worker that dies rejects its in-flight run, is counted in `restarts`, and is replaced by a fresh one (a new
 * session), so the pool recovers.
 *
 * The pool never calls worker.terminate(): with onnxruntime-node 1.30 on Node 20, terminating a thread while it is
 * inside a native create or run aborts the whole process ("terminate called after throwing an instance of
 * 'Napi::Error'"; reproduced by scripts/spike-workers.ts --terminate hard). Workers are asked to close and end
 * themselves from JS, between native calls. A run error that reads like a broken GPU (CUDA/cuDNN failure) also goes to
 * `onFatal` (fatal-gpu-error.ts): the process should exit non-zero and be restarted rather than serve from a broken
 * device.
 *
 * Its parts: options.ts (what it is given), slot-pool.ts (the pixel slots), worker-thread.ts (starting a worker,
 * from sources too, and asking one to end), worker-protocol.ts (the messages), fault-injection.ts (test hooks).
 */
import type { Worker } from 'node:worker_threads';
import { availableCpus } from '../../config/cpus.js';
import type { ProviderName } from '../../config/providers.js';
import { OcularError } from '../../errors.js';
import { silentLogger } from '../logger.js';
import type { Outputs, PreparedPixels, TensorMeta } from '../types.js';
import { webgpuLock } from './device-lock.js';
import { isFatalGpuError } from './fatal-gpu-error.js';
import { attachTestHooks, createHold, type WorkerFault } from './fault-injection.js';
import type { SessionPoolOptions } from './options.js';
import { resolveInstances } from './providers.js';
import { detectInt8Precision, type Int8Precision } from './int8-precision.js';
import { packBatch, SlotPool } from './slot-pool.js';
import { closeWorker, startWorker } from './worker-thread.js';
import { feedsForTransfer } from './feeds.js';
import type { FeedData, FromWorker, ToWorker, WorkerInit } from './worker-protocol.js';

export interface SessionInfo {
  provider: ProviderName;
  requestedProviders: ProviderName[];
  fallbackReason?: string;
  /** Whether the sessions were asked for exact int8 matrix products (int8-precision.ts). */
  exactInt8: boolean;
  /** Images reach the session as uint8 pixels, normalised by the model's prefix (uint8-prefix.ts). */
  uint8Input: boolean;
  /** Whether the sessions keep onnxruntime's CPU memory arena (SessionPoolOptions.cpuMemArena). */
  cpuMemArena: boolean;
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
  /**
   * Raw tensors; with `padTo`, run on that many rows (zero rows appended, their outputs dropped in the worker). The
   * pool takes the feeds' buffers: each array that is the whole of its ArrayBuffer is moved to the worker and reads
   * as empty here afterwards (feeds.ts, feedsForTransfer).
   */
  runTensors(feeds: TensorFeeds, padTo?: number): Promise<Outputs>;
  /**
   * Distinct input shapes each session has run (shape-set.ts), by instance: a replaced worker's count starts again
   * with its new session.
   */
  shapeCounts(): number[];
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

const RESPAWN_DELAY_MS = 1000;
const RESPAWN_MAX_DELAY_MS = 30_000;

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
  /** Buffers moved to the worker with the request (a raw-tensor run's feeds), not copied. */
  transfer?: ArrayBuffer[];
  onHeld?: () => void;
}

interface WorkerHandle {
  worker: Worker;
  /** Which instance it is (0 .. instances-1); a replacement takes the index of the worker it replaces. */
  index: number;
  ready: boolean;
  job: { id: number; job: Job } | undefined;
}

type ReadyMessage = Extract<FromWorker, { type: 'ready' }>;

function errorOf(message: string): Error {
  return new OcularError('INFERENCE_FAILED', message);
}

export async function createSessionPool(opts: SessionPoolOptions): Promise<SessionPool> {
  if (opts.instances !== 'auto' && (!Number.isInteger(opts.instances) || opts.instances < 1)) {
    throw new RangeError(`instances must be a positive integer or 'auto', got ${opts.instances}`);
  }
  const log = opts.logger ?? silentLogger;
  const model = opts.modelName;
  const int8 = opts.int8Precision ?? detectInt8Precision();

  const baseInit = workerInitOf(opts, int8);

  const handles = new Set<WorkerHandle>();
  const idleList: WorkerHandle[] = [];
  const queue: Job[] = [];
  const respawnTimers = new Set<NodeJS.Timeout>();
  let nextId = 1;
  const shapeCounts: number[] = [];
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
      try {
        handle.worker.postMessage({ ...job.request, id, ...(fault !== undefined && { fault }) } as ToWorker, job.transfer);
      } catch (err) {
        // Nothing was posted (a feed whose buffer is detached, already given to an earlier run, cannot be sent): the
        // worker stays idle and only this run fails.
        handle.job = undefined;
        idleList.push(handle);
        settle(job, { error: errorOf(`model ${model}: the run's inputs could not be sent to its worker: ${(err as Error).message}`) });
      }
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
        shapeCounts[handle.index] = msg.shapes;
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
  const spawn = (workerInit: WorkerInit, index: number): Promise<{ handle: WorkerHandle; ready: ReadyMessage }> =>
    new Promise((resolve, reject) => {
      const worker = startWorker(workerInit);
      const handle: WorkerHandle = { worker, index, ready: false, job: undefined };
      handles.add(handle);
      worker.on('message', (msg: FromWorker) => {
        if (handle.ready) {
          onMessage(handle, msg);
        } else if (msg.type === 'ready') {
          handle.ready = true;
          shapeCounts[index] = 0;
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
        respawn(0, handle.index);
      });
    });

  const respawn = (attempt: number, index: number): void => {
    const delayMs = attempt === 0 ? 0 : Math.min(RESPAWN_DELAY_MS * 2 ** (attempt - 1), RESPAWN_MAX_DELAY_MS);
    const timer = setTimeout(() => {
      respawnTimers.delete(timer);
      if (closing && inFlight === 0) return;
      spawn(init, index).then(
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
          respawn(attempt + 1, index);
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
  const started = await spawn({ ...baseInit, profile: true, ...(opts.warmupDims && { warmupDims: opts.warmupDims }) }, 0);
  const first = started.ready;
  idleList.push(started.handle);
  init = { ...baseInit, providers: [first.provider], fallbackToCpu: false, inputName: first.inputName };
  // The others feed images as the first one does (it may have fallen back to the CPU and the float model).
  if (!first.uint8Input) delete init.uint8Input;
  const instances = resolveInstances(opts.instances, first.provider, opts.intraOpNumThreads, opts.cpus ?? availableCpus());
  // Two free slots per instance. Created here, once `auto` is resolved: nothing takes a slot before the pool is
  // returned, and no run settles (settle releases slots) before one is submitted.
  const slots = new SlotPool(instances * 2);
  const rest = await Promise.allSettled(Array.from({ length: instances - 1 }, (_, i) => spawn(init, i + 1)));
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
    exactInt8: int8.exact,
    uint8Input: first.uint8Input,
    cpuMemArena: opts.cpuMemArena ?? true,
    nodeCounts: first.nodeCounts,
    inputs: first.inputs,
    outputs: first.outputs,
  };
  logReady(opts, first, instances, int8);

  const submit = (request: Request, extra: Pick<Job, 'slot' | 'onHeld' | 'transfer'> = {}): Promise<Outputs> => {
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
      let packed: ReturnType<typeof packBatch>;
      try {
        packed = packBatch(slots, batch.items);
      } catch (err) {
        return Promise.reject(err);
      }
      const { slot, items } = packed;
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

    runTensors(feeds: TensorFeeds, padTo?: number): Promise<Outputs> {
      // The feeds' buffers are transferred to the worker, not cloned (feeds.ts, feedsForTransfer: the caller's
      // arrays are detached once the run is posted).
      const sent = feedsForTransfer(feeds);
      return submit({ type: 'runTensors', feeds: sent.feeds, ...(padTo !== undefined && { padTo }) }, { transfer: sent.transfer });
    },

    shapeCounts(): number[] {
      return Array.from({ length: instances }, (_, i) => shapeCounts[i] ?? 0);
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
  attachTestHooks(pool, {
    hold: () => createHold((flag, onHeld) => submit({ type: 'hold', flag }, { onHeld })),
    injectFault(kind: WorkerFault): void {
      pendingFault = kind;
    },
  });
  return pool;
}

/** The session part of the pool's options, for every worker (the first one is also asked to profile). */
function workerInitOf(opts: SessionPoolOptions, int8: Int8Precision): WorkerInit {
  return {
    modelPath: opts.modelPath,
    providers: opts.providers,
    fallbackToCpu: opts.fallbackToCpu,
    gpuDeviceId: opts.gpuDeviceId,
    intraOpNumThreads: opts.intraOpNumThreads,
    interOpNumThreads: opts.interOpNumThreads,
    ...(opts.cpuMemArena !== undefined && { cpuMemArena: opts.cpuMemArena }),
    ...(opts.normalize !== undefined && { normalize: opts.normalize }),
    ...(opts.uint8Input !== undefined && { uint8Input: opts.uint8Input }),
    ...(opts.inputName !== undefined && { inputName: opts.inputName }),
    ...(opts.nice !== undefined && opts.nice > 0 && { nice: opts.nice }),
    profile: false,
    exactInt8: int8.exact,
    ...(opts.providers.includes('webgpu') && { deviceLock: webgpuLock }),
  };
}

/** What the first worker reported, logged once for the pool. */
function logReady(opts: SessionPoolOptions, first: ReadyMessage, instances: number, int8: Int8Precision): void {
  const log = opts.logger ?? silentLogger;
  const model = opts.modelName;
  // Warned once per process by the stage loader, with the remedy; here only for debugging.
  if (first.fallbackReason !== undefined) {
    log.debug(
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
    {
      model,
      provider: first.provider,
      instances,
      ...(opts.instances === 'auto' && { instancesSetting: 'auto' }),
      nodeCounts: first.nodeCounts,
      exactInt8: int8.exact,
      uint8Input: first.uint8Input,
      exactInt8Reason: int8.reason,
    },
    'session pool ready',
  );
}
