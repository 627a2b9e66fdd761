import type { Worker } from 'node:worker_threads';
import { ERROR_CATALOG, OcularError, type ErrorCode } from '../../errors.js';
import { siblingModuleUrl, startModuleWorker } from '../../core/module-worker.js';
import { parseInferRequest, type ParsedInferRequest, type RequestBounds } from './request.js';
import type { FromParser, ToParser } from './parse-worker.js';
import { type InferBody, joinBody } from './body.js';

/**
 * Parses inference request bodies: small ones inline, large ones (past `inlineMaxBytes`, whatever the size of
 * their JSON part) in a pool of worker threads, so that neither JSON.parse of a 100 MB body nor copying 200 MiB
 * of binary tensors out of one stalls the event loop for other requests, and one large body does not hold up the
 * others where there are cores for more than one thread. A body's memory goes to its thread without a copy when
 * it owns it (an InferBody's parts, body.ts), and the parsed tensors come back the same way. A thread that parsed
 * a large body is replaced (RECYCLE_ABOVE_BYTES), so what that body left in its heap is given back at once.
 * Bounded: at most `queueSize` bodies wait for a thread (past it 503 PARSER_BUSY), and a body that takes longer
 * than `timeoutMs` to parse is answered 413 PARSE_TIMEOUT and its thread terminated (the worker runs no native
 * code, so terminate() is safe here, unlike the onnxruntime workers); its slot takes the next body, on a fresh
 * thread, once the terminated one has exited (see retire), which is at once: a large JSON header is parsed by
 * JavaScript that terminate() interrupts (json-bytes.ts), not by V8's JSON.parse, which it does not. Threads start
 * on first use and end on close().
 *
 *   parse -> inline (small) | queue (FIFO, <= queueSize) -> free thread -> result | timeout: terminate, replace
 */

const WORKER_URL = siblingModuleUrl('parse-worker', import.meta.url);

/** The thread (core/module-worker.ts: the built file, or the .ts entry under tsx). */
function startWorker(): Worker {
  return startModuleWorker(WORKER_URL);
}

export interface InferParserOptions {
  /** Bodies of at most this many bytes are parsed on the calling thread. */
  inlineMaxBytes?: number;
  /** Worker threads for the large ones. */
  threads?: number;
  /** Large bodies waiting for a free thread; past it PARSER_BUSY. */
  queueSize?: number;
  /** Most time a thread may spend on one body. */
  timeoutMs?: number;
}

interface Job {
  body: Uint8Array | InferBody;
  /** The body's size when it came (a transferred body reads 0 afterwards). */
  byteLength: number;
  headerLength: number | undefined;
  bounds: RequestBounds | undefined;
  signal: AbortSignal | undefined;
  resolve(r: ParsedInferRequest): void;
  reject(e: Error): void;
}

/** One thread and the body it parses now. */
interface Slot {
  worker: Worker | undefined;
  /** The thread has loaded its module: a body's time limit runs from then. */
  ready: boolean;
  job: { id: number; job: Job; timer: NodeJS.Timeout | undefined; arm(): void } | undefined;
  /** A thread told to end and not yet gone: the slot takes no body until it is (see retire). */
  retiring: boolean;
}

/**
 * A thread that parsed a body of at least this many bytes is ended once it is done, and a fresh one started for
 * the next: what the large body left in its heap (the body itself, the JSON text as a string, the parsed arrays)
 * is garbage an idle thread would keep for as long as it allocates nothing more, hundreds of MiB per thread.
 */
export const RECYCLE_ABOVE_BYTES = 16 * 1024 * 1024;

export class InferParser {
  private readonly slots: Slot[];
  private readonly queue: Job[] = [];
  private readonly inlineMaxBytes: number;
  private readonly queueSize: number;
  private readonly timeoutMs: number;
  private nextId = 1;
  private closed = false;
  /** Bodies parsed in a worker so far (tests use it to know the worker path was taken). */
  offThread = 0;
  /** Threads terminated for running past the time limit. */
  timedOut = 0;
  /** Threads ended after a large body (RECYCLE_ABOVE_BYTES), their memory given back. */
  recycled = 0;

  constructor({ inlineMaxBytes = 64 * 1024, threads = 1, queueSize = 16, timeoutMs = 10_000 }: InferParserOptions = {}) {
    this.inlineMaxBytes = inlineMaxBytes;
    this.queueSize = queueSize;
    this.timeoutMs = timeoutMs;
    this.slots = Array.from({ length: Math.max(1, threads) }, () => ({ worker: undefined, ready: false, job: undefined, retiring: false }));
  }

  /** Threads in the pool. */
  get threads(): number {
    return this.slots.length;
  }

  /** Bodies waiting for a thread. */
  get queued(): number {
    return this.queue.length;
  }

  /** Threads told to end that have not exited yet. */
  get retiring(): number {
    return this.slots.filter((s) => s.retiring).length;
  }

  /**
   * Parses one body: bytes, or an InferBody whose parts it takes over (they are handed to a thread, and unusable
   * here afterwards). A body still queued when `signal` fires is dropped (CLIENT_CLOSED_REQUEST).
   */
  parse(body: Uint8Array | InferBody, headerLength: number | undefined, signal?: AbortSignal, bounds?: RequestBounds): Promise<ParsedInferRequest> {
    if (body.byteLength <= this.inlineMaxBytes || this.closed) {
      try {
        return Promise.resolve(parseInferRequest(body instanceof Uint8Array ? body : joinBody(body), headerLength, bounds));
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    const free = this.slots.some((s) => s.job === undefined && !s.retiring);
    if (!free && this.queue.length >= this.queueSize) {
      return Promise.reject(new OcularError('PARSER_BUSY', `${this.queue.length} request bodies are waiting for the parser, its limit`));
    }
    return new Promise<ParsedInferRequest>((resolve, reject) => {
      this.queue.push({ body, byteLength: body.byteLength, headerLength, bounds, signal, resolve, reject });
      this.pump();
    });
  }

  /** Hands queued bodies to free threads, in arrival order. */
  private pump(): void {
    for (const slot of this.slots) {
      if (this.closed) return;
      if (slot.job !== undefined || slot.retiring) continue;
      let job = this.queue.shift();
      while (job?.signal?.aborted === true) {
        job.reject(new OcularError('CLIENT_CLOSED_REQUEST'));
        job = this.queue.shift();
      }
      if (job === undefined) return;
      this.dispatch(slot, job);
    }
  }

  private dispatch(slot: Slot, job: Job): void {
    const worker = slot.worker ?? this.start(slot);
    const id = this.nextId++;
    this.offThread++;
    const timeoutMs = this.timeoutMs;
    const onTimeout = (): void => {
      if (slot.job?.id !== id) return;
      this.timedOut++;
      slot.job = undefined;
      this.retire(slot, worker);
      job.reject(new OcularError('PARSE_TIMEOUT', `the request body took longer than ${this.timeoutMs} ms to parse, the limit (OCULAR_PARSE_TIMEOUT_MS)`));
    };
    const current: NonNullable<Slot['job']> = {
      id,
      job,
      timer: undefined,
      arm() {
        current.timer = setTimeout(onTimeout, timeoutMs);
        current.timer.unref();
      },
    };
    slot.job = current;
    if (slot.ready) current.arm();
    const { body, headerLength, bounds } = job;
    // An InferBody's parts own their buffers: transferred. Plain bytes are transferred when they own their whole
    // buffer (a pooled Buffer shares its slab with others: copied).
    let parts: Uint8Array[];
    if (body instanceof Uint8Array) {
      const whole = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer;
      parts = [whole ? new Uint8Array(body.buffer, 0, body.byteLength) : new Uint8Array(body)];
    } else {
      parts = body.parts.map((p) => new Uint8Array(p.buffer, p.byteOffset, p.byteLength));
    }
    const transfer = [...new Set(parts.map((p) => p.buffer as ArrayBuffer))];
    worker.postMessage({ id, parts, headerLength, bounds } satisfies ToParser, transfer);
  }

  /** Ends the slot's current body with `settle`, frees the slot and hands it the next one. */
  private finish(slot: Slot, id: number, settle: (job: Job) => void): void {
    const current = slot.job;
    if (current === undefined || current.id !== id) return;
    clearTimeout(current.timer);
    slot.job = undefined;
    settle(current.job);
    if (current.job.byteLength >= RECYCLE_ABOVE_BYTES && slot.worker !== undefined) {
      this.recycled++;
      this.retire(slot, slot.worker);
    } else {
      this.pump();
    }
  }

  /**
   * Ends the slot's thread; the slot takes its next body, on a fresh thread, once this one has exited, so that the
   * threads parsing at once, the ones told to stop included, never outnumber the pool, nor the memory they hold.
   * V8 checks for termination only between JavaScript steps: a thread inside one native call (JSON.parse of a 100 MB
   * text ran 27 s past its terminate()) would hold its slot until that call returns. Headers of a size where that
   * matters are parsed in JavaScript (request.ts, STOPPABLE_JSON_BYTES), so the wait is the next loop iteration.
   */
  private retire(slot: Slot, worker: Worker): void {
    // Its exit is ignored by the handlers in start() (slot.worker no longer names it).
    slot.worker = undefined;
    slot.retiring = true;
    void worker.terminate().finally(() => {
      slot.retiring = false;
      this.pump();
    });
  }

  private start(slot: Slot): Worker {
    const worker = startWorker();
    worker.unref();
    slot.ready = false;
    worker.on('message', (msg: FromParser) => {
      if (slot.worker !== worker) return;
      if ('ready' in msg) {
        slot.ready = true;
        slot.job?.arm();
        return;
      }
      this.finish(slot, msg.id, (job) => {
        if (msg.ok) {
          // BYTES elements come back as Uint8Arrays (transferred or cloned).
          for (const t of msg.request.inputs) {
            if (Array.isArray(t.data)) t.data = t.data.map((u) => Buffer.from(u.buffer, u.byteOffset, u.byteLength));
          }
          job.resolve(msg.request);
        } else {
          const code = (msg.code in ERROR_CATALOG ? msg.code : 'INVALID_REQUEST') as ErrorCode;
          job.reject(new OcularError(code, msg.message));
        }
      });
    });
    const fail = (err: Error): void => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      const current = slot.job;
      if (current !== undefined) this.finish(slot, current.id, (job) => job.reject(new OcularError('INTERNAL', undefined, { cause: err })));
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the request parser worker exited with code ${code}`)));
    slot.worker = worker;
    return worker;
  }

  async close(): Promise<void> {
    this.closed = true;
    const closing = new OcularError('DRAINING');
    for (const job of this.queue.splice(0)) job.reject(closing);
    const workers: Worker[] = [];
    for (const slot of this.slots) {
      if (slot.worker !== undefined) workers.push(slot.worker);
      slot.worker = undefined;
      const current = slot.job;
      if (current !== undefined) {
        clearTimeout(current.timer);
        slot.job = undefined;
        current.job.reject(new OcularError('INTERNAL', undefined, { cause: new Error('the request parser closed') }));
      }
    }
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
