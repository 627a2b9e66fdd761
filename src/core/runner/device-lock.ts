/**
 * One lock across worker threads around every native call on a WebGPU session (create, run, release).
 *
 * onnxruntime-node's WebGPU provider keeps one WebGPU context (one Dawn device) for the whole process, and using it
 * from two threads at once crashes the process (SIGSEGV; checked with onnxruntime-node 1.30 on lavapipe: two
 * worker threads creating sessions at once, or running sessions created one after the other at once). Ocular runs
 * each session in a worker thread of its own (OCR's two stages are created and warmed together), so the calls are
 * serialised here. One device runs one thing at a time anyway.
 *
 * The lock is an Int32 in a SharedArrayBuffer (0 free, 1 held), taken with Atomics in the worker threads, which
 * may block. It is process-wide, like the native context it guards: every pool of every app in the process passes
 * the same buffer (`webgpuLock`).
 */

/** The one lock buffer of this process (main thread); workers receive it in their WorkerInit. */
export const webgpuLock: SharedArrayBuffer = new SharedArrayBuffer(4);

const WAIT_SLICE_MS = 100;

/** Runs `fn` holding the lock; blocks this thread while another holds it. Worker threads only (Atomics.wait). */
export async function withDeviceLock<T>(lock: SharedArrayBuffer, fn: () => Promise<T>): Promise<T> {
  const cell = new Int32Array(lock);
  while (Atomics.compareExchange(cell, 0, 0, 1) !== 0) Atomics.wait(cell, 0, 1, WAIT_SLICE_MS);
  try {
    return await fn();
  } finally {
    Atomics.store(cell, 0, 0);
    Atomics.notify(cell, 0, 1);
  }
}
