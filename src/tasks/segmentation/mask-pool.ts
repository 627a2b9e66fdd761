import type { Worker } from 'node:worker_threads';
import { OcularError } from '../../errors.js';
import { siblingModuleUrl, startModuleWorker } from '../../core/module-worker.js';
import type { MaskJob, MaskResult } from './mask.js';
import type { FromMaskThread, ToMaskThread } from './mask-worker.js';

/**
 * The mask threads: worker threads that turn a segmentation model's output into masks at the original image size
 * (mask.ts), so that upsampling and encoding (tens of milliseconds for a large photo) never hold the event loop.
 * Jobs wait in arrival order for a free thread; how many can wait is bounded by admission (one job per admitted
 * image). A job whose client left while it waited is dropped. Threads start on first use and end on close(); a
 * thread that dies fails its job (500) and is replaced by the next job.
 *
 *   build -> queue (FIFO) -> free thread -> MaskResult | RESPONSE_TOO_LARGE | INTERNAL
 */

const WORKER_URL = siblingModuleUrl('mask-worker', import.meta.url);

/** The thread (core/module-worker.ts: the built file, or the .ts entry under tsx). */
function startWorker(): Worker {
  return startModuleWorker(WORKER_URL);
}

interface Job {
  job: MaskJob;
  signal: AbortSignal | undefined;
  resolve(r: MaskResult): void;
  reject(e: Error): void;
}

interface Slot {
  worker: Worker | undefined;
  current: { id: number; job: Job } | undefined;
}

export interface MaskBuilder {
  /** Builds one image's masks; `job.data` is transferred to the thread (the caller must not use it after). */
  build(job: MaskJob, signal?: AbortSignal): Promise<MaskResult>;
}

export class MaskPool implements MaskBuilder {
  private readonly slots: Slot[];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;

  constructor({ threads = 1 }: { threads?: number } = {}) {
    this.slots = Array.from({ length: Math.max(1, threads) }, () => ({ worker: undefined, current: undefined }));
  }

  get threads(): number {
    return this.slots.length;
  }

  /** Threads started so far (they start on first use). */
  get started(): number {
    return this.slots.filter((s) => s.worker !== undefined).length;
  }

  build(job: MaskJob, signal?: AbortSignal): Promise<MaskResult> {
    if (this.closed) return Promise.reject(new OcularError('DRAINING'));
    return new Promise<MaskResult>((resolve, reject) => {
      this.queue.push({ job, signal, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    for (const slot of this.slots) {
      if (this.closed) return;
      if (slot.current !== undefined) continue;
      let job = this.queue.shift();
      while (job?.signal?.aborted === true) {
        job.reject(new OcularError('CLIENT_CLOSED_REQUEST'));
        job = this.queue.shift();
      }
      if (job === undefined) return;
      const worker = slot.worker ?? this.start(slot);
      const id = this.nextId++;
      slot.current = { id, job };
      worker.postMessage({ id, job: job.job } satisfies ToMaskThread, [job.job.data.buffer as ArrayBuffer]);
    }
  }

  private finish(slot: Slot, id: number, settle: (job: Job) => void): void {
    const current = slot.current;
    if (current === undefined || current.id !== id) return;
    slot.current = undefined;
    settle(current.job);
    this.pump();
  }

  private start(slot: Slot): Worker {
    const worker = startWorker();
    worker.unref();
    worker.on('message', (msg: FromMaskThread) => {
      if (slot.worker !== worker) return;
      this.finish(slot, msg.id, (job) => {
        if (msg.ok) {
          const { png } = msg.result;
          // Structured clone hands the PNG back as a plain Uint8Array over the transferred buffer.
          if (png !== undefined) msg.result.png = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
          job.resolve(msg.result);
        } else if (msg.tooLarge) {
          job.reject(
            new OcularError('RESPONSE_TOO_LARGE', `${msg.message}, the limit for one answer (OCULAR_MAX_RESPONSE_BYTES); ask for fewer classes (classes=) or a larger min_area`),
          );
        } else {
          job.reject(new OcularError('INFERENCE_FAILED', `the segmentation output could not be read: ${msg.message}`));
        }
      });
    });
    const fail = (err: Error): void => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      const current = slot.current;
      if (current !== undefined) this.finish(slot, current.id, (job) => job.reject(new OcularError('INTERNAL', undefined, { cause: err })));
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`a mask thread exited with code ${code}`)));
    slot.worker = worker;
    return worker;
  }

  /** Rejects what waits (DRAINING) and what runs, and ends the threads. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new OcularError('DRAINING'));
    const workers: Worker[] = [];
    for (const slot of this.slots) {
      if (slot.worker !== undefined) workers.push(slot.worker);
      slot.worker = undefined;
      const current = slot.current;
      slot.current = undefined;
      current?.job.reject(new OcularError('INTERNAL', undefined, { cause: new Error('the mask threads closed') }));
    }
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
