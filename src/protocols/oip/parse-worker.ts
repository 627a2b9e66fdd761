/**
 * Worker-thread entry: parses large inference request bodies (JSON.parse plus flattening `data` into typed
 * arrays, or copying binary tensors out of the body), so the main thread's event loop keeps answering other
 * requests meanwhile. One message in (the body's parts, joined here when there are several), one out; the typed
 * arrays of the result, and BYTES elements that own their memory, are transferred back, not copied.
 */
import { parentPort } from 'node:worker_threads';
import { isOcularError } from '../../errors.js';
import { parseInferRequest, type RequestBounds } from './request.js';

export type ToParser = { id: number; parts: Uint8Array[]; headerLength: number | undefined; bounds: RequestBounds | undefined };
export type FromParser =
  | { ready: true }
  | { id: number; ok: true; request: ReturnType<typeof parseInferRequest> }
  | { id: number; ok: false; code: string; message: string };

if (parentPort !== null) {
  const port = parentPort;
  port.on('message', (msg: ToParser) => {
    try {
      const [first] = msg.parts;
      const body = msg.parts.length === 1 && first !== undefined ? first : Buffer.concat(msg.parts);
      const request = parseInferRequest(body, msg.headerLength, msg.bounds);
      const transfer: ArrayBuffer[] = [];
      for (const t of request.inputs) {
        if (!Array.isArray(t.data)) {
          transfer.push(t.data.buffer as ArrayBuffer);
          continue;
        }
        // BYTES elements: one that owns its whole buffer is transferred (a large image); the small ones share
        // Buffer's pool slabs, and are cloned.
        for (const e of t.data) {
          if (e.byteOffset === 0 && e.byteLength === e.buffer.byteLength && e.byteLength > 0) transfer.push(e.buffer as ArrayBuffer);
        }
      }
      port.postMessage({ id: msg.id, ok: true, request } satisfies FromParser, transfer);
    } catch (err) {
      const code = isOcularError(err) ? err.code : 'INVALID_REQUEST';
      port.postMessage({ id: msg.id, ok: false, code, message: (err as Error).message } satisfies FromParser);
    }
  });
  // Loaded: the parser's time limit for a body counts from here, not from the thread's start.
  port.postMessage({ ready: true } satisfies FromParser);
}
