import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ERROR_CATALOG, OcularError, type ErrorCode } from '../errors.js';
import { parseInferRequest, type ParsedInferRequest } from './infer-request.js';
import type { FromParser, ToParser } from './infer-parse-worker.js';

/**
 * Parses inference request bodies: small ones inline, large ones (JSON header past `inlineMaxBytes`) in one
 * worker thread, so that JSON.parse of a 100 MB body does not stall the event loop for other requests. The
 * worker is started on first use and ended by close(); it runs no native code, so terminate() is safe here
 * (unlike the onnxruntime workers). Bodies are parsed one at a time, in arrival order.
 */

const WORKER_URL = new URL('./infer-parse-worker' + extname(fileURLToPath(import.meta.url)), import.meta.url);

/** Same bootstrap as the session pool's: from sources (tsx), the worker registers tsx before importing its .ts entry. */
function startWorker(): Worker {
  if (!WORKER_URL.pathname.endsWith('.ts')) return new Worker(WORKER_URL);
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const bootstrap =
    `import(${JSON.stringify(tsxApi)})` + `.then((tsx) => { tsx.register(); return import(${JSON.stringify(WORKER_URL.href)}); })`;
  return new Worker(bootstrap, { eval: true });
}

interface Pending {
  resolve(r: ParsedInferRequest): void;
  reject(e: Error): void;
}

export class InferParser {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  /** Bodies parsed in the worker so far (tests use it to know the worker path was taken). */
  offThread = 0;

  constructor(private readonly inlineMaxBytes = 64 * 1024) {}

  parse(body: Buffer, headerLength: number | undefined): Promise<ParsedInferRequest> {
    const jsonBytes = headerLength ?? body.byteLength;
    if (jsonBytes <= this.inlineMaxBytes || this.closed) {
      try {
        return Promise.resolve(parseInferRequest(body, headerLength));
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    const worker = this.start();
    const id = this.nextId++;
    this.offThread++;
    return new Promise<ParsedInferRequest>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Transfer the body when it owns its whole buffer (Fastify concatenates large bodies into fresh ones).
      const whole = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer;
      const bytes = whole ? new Uint8Array(body.buffer, 0, body.byteLength) : new Uint8Array(body);
      worker.postMessage({ id, body: bytes, headerLength } satisfies ToParser, [bytes.buffer as ArrayBuffer]);
    });
  }

  private start(): Worker {
    if (this.worker !== undefined) return this.worker;
    const worker = startWorker();
    worker.unref();
    worker.on('message', (msg: FromParser) => {
      const p = this.pending.get(msg.id);
      if (p === undefined) return;
      this.pending.delete(msg.id);
      if (msg.ok) {
        // Structured clone hands BYTES elements back as Uint8Arrays.
        for (const t of msg.request.inputs) {
          if (Array.isArray(t.data)) t.data = t.data.map((u) => Buffer.from(u.buffer, u.byteOffset, u.byteLength));
        }
        p.resolve(msg.request);
      } else {
        const code = (msg.code in ERROR_CATALOG ? msg.code : 'INVALID_REQUEST') as ErrorCode;
        p.reject(new OcularError(code, msg.message));
      }
    });
    const fail = (err: Error): void => {
      for (const p of this.pending.values()) p.reject(new OcularError('INTERNAL', undefined, { cause: err }));
      this.pending.clear();
      this.worker = undefined;
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the request parser worker exited with code ${code}`)));
    this.worker = worker;
    return worker;
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    if (w !== undefined) await w.terminate();
  }
}
