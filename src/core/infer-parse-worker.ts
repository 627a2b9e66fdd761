/**
 * Worker-thread entry: parses large inference request bodies (JSON.parse plus flattening `data` into typed
 * arrays), so the main thread's event loop keeps answering other requests meanwhile. One message in, one out;
 * the typed arrays of the result are transferred back, not copied.
 */
import { parentPort } from 'node:worker_threads';
import { isOcularError } from '../errors.js';
import { parseInferRequest } from './infer-request.js';

export type ToParser = { id: number; body: Uint8Array; headerLength: number | undefined };
export type FromParser =
  | { id: number; ok: true; request: ReturnType<typeof parseInferRequest> }
  | { id: number; ok: false; code: string; message: string };

if (parentPort !== null) {
  const port = parentPort;
  port.on('message', (msg: ToParser) => {
    try {
      const request = parseInferRequest(msg.body, msg.headerLength);
      const transfer: ArrayBuffer[] = [];
      for (const t of request.inputs) {
        if (Array.isArray(t.data)) continue; // BYTES: a handful of small buffers, cloned
        transfer.push(t.data.buffer as ArrayBuffer);
      }
      port.postMessage({ id: msg.id, ok: true, request } satisfies FromParser, transfer);
    } catch (err) {
      const code = isOcularError(err) ? err.code : 'INVALID_REQUEST';
      port.postMessage({ id: msg.id, ok: false, code, message: (err as Error).message } satisfies FromParser);
    }
  });
}
