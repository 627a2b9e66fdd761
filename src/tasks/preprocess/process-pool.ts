import { fork, type ChildProcess } from 'node:child_process';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { InputSpec } from '../../config/input-spec.js';
import type { PreparedImage } from '../../core/types.js';
import { OcularError } from '../../errors.js';
import { prepareImage, type DecodeLimits, type ImageFormat } from './image.js';
import { parseChildReply, type ChildInit, type ChildRequest } from './process-protocol.js';

/**
 * Image preparation (decode, resize, letterbox) in a pool of child processes.
 *
 * Why processes: libvips, under sharp, takes process-wide locks (GLib mutexes, then futexes) for every operation it
 * builds. On a 16-core GPU host, `prepareImage` for yolox-nano gave 70 images/s on one libuv thread and at most
 * 290 on 16 threads of one process, with the kernel's lock slow path the largest item in a profile; 16 processes
 * of one thread each gave 1000 (docs/PERFORMANCE.md, "GPU"). A GPU serves far more than 290 images/s, so on such a
 * host the server's preprocessing has to be spread over processes. Threads of one process cannot lift it.
 *
 * The parent sends the image bytes and the model's input spec; the child answers the resized RGB pixels and the
 * transform (about 0.5 MB for a 416 x 416 input) or an error from the catalog. What comes back is checked
 * (process-protocol.ts): the child decodes hostile bytes. Each request goes to the ready child with the fewest
 * requests open. While no child is ready (at startup, after a crash, once the pool is closed) images are prepared
 * in this process as before, so a request is never refused for want of a child.
 *
 * A child that exits unexpectedly fails only the requests it had open (500 INTERNAL: the process died under them)
 * and is started again, after a delay that doubles while it keeps dying young.
 */

export interface PreprocessPoolOptions {
  processes: number;
  imageFormats: readonly ImageFormat[];
  /** Linux nice value of the children (the server's OCULAR_COMPUTE_NICE), so the event loop comes first. */
  nice?: number;
  logger: Pick<Logger, 'info' | 'warn' | 'error'>;
  /** Called when a child exits without being asked to (a metric counts them). */
  onUnexpectedExit?: () => void;
  /** Child entry point; tests point it elsewhere. Default: process-child next to this file. */
  childUrl?: URL;
}

export interface PreprocessPoolStats {
  /** Children started and ready. */
  ready: number;
  /** Requests sent to a child and not yet answered. */
  open: number;
  /** Children that exited without being asked to. */
  exits: number;
  /** Requests prepared in this process because no child was ready. */
  inProcess: number;
}

const CHILD_URL = new URL('./process-child' + extname(fileURLToPath(import.meta.url)), import.meta.url);
/** A child that dies within this long of its start counts as dying young (its restart delay doubles). */
const YOUNG_MS = 10_000;
const RESTART_MIN_MS = 500;
const RESTART_MAX_MS = 30_000;

interface Pending {
  resolve(image: PreparedImage): void;
  reject(err: Error): void;
}

interface Child {
  proc: ChildProcess;
  ready: boolean;
  startedAt: number;
  pending: Map<number, Pending>;
}

export class PreprocessPool {
  private readonly children = new Set<Child>();
  private nextId = 1;
  private closing = false;
  private restartDelayMs = RESTART_MIN_MS;
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  private exits = 0;
  private inProcess = 0;
  private readonly init: ChildInit;
  private readonly childUrl: URL;

  constructor(private readonly opts: PreprocessPoolOptions) {
    if (!Number.isInteger(opts.processes) || opts.processes < 0) throw new RangeError(`processes must be a whole number >= 0, got ${opts.processes}`);
    this.init = { imageFormats: [...opts.imageFormats], nice: opts.nice ?? 0 };
    this.childUrl = opts.childUrl ?? CHILD_URL;
    for (let i = 0; i < opts.processes; i++) this.spawn();
  }

  get size(): number {
    return this.opts.processes;
  }

  stats(): PreprocessPoolStats {
    let ready = 0;
    let open = 0;
    for (const c of this.children) {
      if (c.ready) ready++;
      open += c.pending.size;
    }
    return { ready, open, exits: this.exits, inProcess: this.inProcess };
  }

  /** The children's process ids (running, ready or not). */
  pids(): number[] {
    return [...this.children].flatMap((c) => (c.proc.pid !== undefined ? [c.proc.pid] : []));
  }

  /** Resolves once every child is ready (true), or after `timeoutMs` (false). */
  async whenReady(timeoutMs = 10_000): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (this.stats().ready < this.opts.processes) {
      if (this.closing || performance.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return true;
  }

  /** prepareImage, in the least busy ready child, or here when none is ready. Throws only OcularError. */
  prepare(bytes: Buffer, spec: InputSpec, limits: DecodeLimits): Promise<PreparedImage> {
    const child = this.pick();
    if (child === undefined) {
      if (this.opts.processes > 0) this.inProcess++;
      return prepareImage(bytes, spec, limits);
    }
    const id = this.nextId++;
    const request: ChildRequest = {
      id,
      bytes,
      spec,
      limits: { maxInputPixels: limits.maxInputPixels, allowedFormats: [...limits.allowedFormats] },
    };
    return new Promise<PreparedImage>((resolve, reject) => {
      child.pending.set(id, { resolve, reject });
      child.proc.send(request, (err) => {
        if (err === null || err === undefined || !child.pending.has(id)) return;
        // The channel closed under us (the child is exiting): this one is prepared here instead.
        child.pending.delete(id);
        this.inProcess++;
        prepareImage(bytes, spec, limits).then(resolve, reject);
      });
    });
  }

  /**
   * Lets the open requests finish (at most `timeoutMs`), then ends the children. Later `prepare` calls run in this
   * process. Resolves once every child has exited.
   */
  async close(timeoutMs = 5_000): Promise<void> {
    this.closing = true;
    for (const t of this.restartTimers) clearTimeout(t);
    this.restartTimers.clear();
    const deadline = performance.now() + timeoutMs;
    while (this.stats().open > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await Promise.all(
      [...this.children].map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.proc.exitCode !== null || c.proc.signalCode !== null) {
              resolve();
              return;
            }
            c.proc.once('exit', () => resolve());
            // The child exits when its channel closes; one that does not within a second is killed.
            if (c.proc.connected) c.proc.disconnect();
            const kill = setTimeout(() => c.proc.kill('SIGKILL'), 1_000);
            kill.unref();
          }),
      ),
    );
  }

  private pick(): Child | undefined {
    let best: Child | undefined;
    for (const c of this.children) {
      if (!c.ready || !c.proc.connected) continue;
      if (best === undefined || c.pending.size < best.pending.size) best = c;
    }
    return best;
  }

  private spawn(): void {
    const url = this.childUrl;
    // From sources (tests, tsx) the child is a .ts file and needs tsx's loader; built, it is plain JavaScript.
    const execArgv = url.pathname.endsWith('.ts') ? ['--import', import.meta.resolve('tsx')] : [];
    const proc = fork(fileURLToPath(url), [], {
      serialization: 'advanced',
      execArgv,
      env: { ...process.env, OCULAR_PREPROCESS_INIT: JSON.stringify(this.init), UV_THREADPOOL_SIZE: '1' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const child: Child = { proc, ready: false, startedAt: performance.now(), pending: new Map() };
    this.children.add(child);
    proc.on('message', (message: unknown) => this.onMessage(child, message));
    proc.on('error', (err) => {
      this.opts.logger.error({ err, pid: proc.pid }, 'preprocessing process error');
    });
    proc.on('exit', (code, signal) => this.onExit(child, code, signal));
  }

  private onMessage(child: Child, message: unknown): void {
    const reply = parseChildReply(message);
    if (reply === undefined) {
      this.opts.logger.error({ pid: child.proc.pid }, 'preprocessing process sent a malformed reply: ending it');
      child.proc.kill('SIGKILL');
      return;
    }
    if ('ready' in reply) {
      child.ready = true;
      return;
    }
    const pending = child.pending.get(reply.id);
    if (pending === undefined) return;
    child.pending.delete(reply.id);
    if (!reply.ok) {
      pending.reject(new OcularError(reply.code, reply.detail));
      return;
    }
    const pixels = Buffer.from(reply.pixels.buffer, reply.pixels.byteOffset, reply.pixels.byteLength);
    pending.resolve({ pixels, width: reply.width, height: reply.height, transform: reply.transform });
  }

  private onExit(child: Child, code: number | null, signal: NodeJS.Signals | null): void {
    this.children.delete(child);
    const lost = child.pending.size;
    for (const p of child.pending.values()) {
      p.reject(new OcularError('INTERNAL', `the preprocessing process exited (${signal ?? `code ${code}`}) while preparing the image`));
    }
    child.pending.clear();
    if (this.closing) return;
    this.exits++;
    this.opts.onUnexpectedExit?.();
    const young = performance.now() - child.startedAt < YOUNG_MS;
    this.restartDelayMs = young ? Math.min(RESTART_MAX_MS, this.restartDelayMs * 2) : RESTART_MIN_MS;
    const delay = young ? this.restartDelayMs : RESTART_MIN_MS;
    this.opts.logger.error({ pid: child.proc.pid, code, signal, lost, restartInMs: delay }, 'preprocessing process exited');
    const timer = setTimeout(() => {
      this.restartTimers.delete(timer);
      if (!this.closing) this.spawn();
    }, delay);
    this.restartTimers.add(timer);
  }
}

/**
 * How many preprocessing processes `setting` means, once the models are loaded. `auto`: none while every stage
 * runs on the CPU provider (there, inference wants the cores, and a child adds a copy of every image's pixels);
 * where one runs on a GPU provider, the CPUs less two (the event loop and the inference worker's host thread keep
 * one each), none below three CPUs.
 */
export function resolvePreprocessProcesses(setting: 'auto' | number, providers: readonly string[], cpus: number): number {
  if (setting !== 'auto') return setting;
  if (!providers.some((p) => p !== 'cpu')) return 0;
  return cpus >= 3 ? cpus - 2 : 0;
}
