import type { Worker } from 'node:worker_threads';
import { siblingModuleUrl, startModuleWorker } from '../module-worker.js';
import type { ToWorker, WorkerInit } from './worker-protocol.js';

/** Starting and ending a session pool's worker threads (worker.ts is their entry). */

const WORKER_URL = siblingModuleUrl('worker', import.meta.url);

/** Starts the worker thread (module-worker.ts: the built file, or the .ts entry under tsx). */
export function startWorker(workerData: WorkerInit): Worker {
  return startModuleWorker(WORKER_URL, { workerData });
}

/**
 * Asks an idle worker to release its session and end, and waits for it to exit. No terminate() fallback: that
 * could land inside session.release() and abort the process (see session-pool.ts); a worker that never ends is
 * left to the process's own shutdown deadline.
 */
export function closeWorker(worker: Worker): Promise<void> {
  return new Promise<void>((resolve) => {
    if (worker.threadId < 0) {
      resolve(); // already ended
      return;
    }
    worker.once('exit', () => resolve());
    worker.postMessage({ type: 'close' } satisfies ToWorker);
  });
}
