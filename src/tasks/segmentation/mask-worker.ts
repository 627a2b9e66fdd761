/**
 * Mask-thread entry: builds one image's masks (mask.ts) per message, off the server's main thread. The job's
 * output tensor was transferred in; the PNG, when there is one, is transferred back.
 */
import { parentPort } from 'node:worker_threads';
import { MaskTooLargeError, buildMask, type MaskJob, type MaskResult } from './mask.js';

export type ToMaskThread = { id: number; job: MaskJob };
export type FromMaskThread =
  | { id: number; ok: true; result: MaskResult }
  | { id: number; ok: false; tooLarge: boolean; message: string };

if (parentPort !== null) {
  const port = parentPort;
  port.on('message', ({ id, job }: ToMaskThread) => {
    try {
      const result = buildMask(job);
      const transfer = result.png !== undefined ? [result.png.buffer as ArrayBuffer] : [];
      port.postMessage({ id, ok: true, result } satisfies FromMaskThread, transfer);
    } catch (err) {
      port.postMessage({ id, ok: false, tooLarge: err instanceof MaskTooLargeError, message: (err as Error).message } satisfies FromMaskThread);
    }
  });
}
