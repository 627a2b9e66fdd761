import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { InputSpec } from '../../config/input-spec.js';
import type { PreparedImage } from '../../core/types.js';
import { OcularError } from '../../errors.js';
import { prepareImage, type DecodeLimits, type ImageFormat } from './image.js';
import { FrameReader, frameHead } from './frames.js';
import { parseChildReply, type ChildInit, type ChildRequest } from './process-protocol.js';

/**
 * Image preparation (decode, resize, letterbox) in a pool of child processes.
 *
 * Why processes: libvips, under sharp, takes process-wide locks (GLib mutexes, then futexes) for every operation it
 * builds. On a 16-core GPU host, `prepareImage` for yolox-nano gave 70 images/s on one libuv thread and at most
 * 290 on 16 threads of one process, with the kernel's lock slow path the largest item in a profile; 16 processes
 * of one thread each gave 1000 (docs/PERFORMANCE.md, "GPU"). The H200 behind it was 30-44 % busy at that rate, so on
 * such a host the server's preprocessing has to be spread over processes: threads of one process cannot lift it.
 *
 * The parent sends the image bytes and the model's input spec; the child answers the resized RGB pixels and the
 * transform (about 0.5 MB for a 416 x 416 input) or an error from the catalog, as frames on a pipe each way
 * (frames.ts). What comes back is checked (process-protocol.ts): the child decodes hostile bytes. Each request goes
 * to the ready child with the fewest requests open. While no child is ready (at startup, after a crash, once the
 * pool is closed) images are prepared in this process as before, so a request is never refused for want of a child.
 *
 * A child that exits unexpectedly fails only the requests it had open (500 INTERNAL: the process died under them)
 * and is started again, after a delay that doubles while it keeps dying young.
 */

/** What the pool logs through (a pino Logger is one). */
export interface PoolLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface PreprocessPoolOptions {
  processes: number;
  imageFormats: readonly ImageFormat[];
  /** Linux nice value of the children (the server's OCULAR_COMPUTE_NICE), so the event loop comes first. */
  nice?: number;
  logger: PoolLogger;
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
/** Largest reply payload taken from a child: the pixels of a 65536 x 65536 image would be 12 GiB, so 1 GiB. */
const MAX_REPLY_BYTES = 2 ** 30;

interface Pending {
  resolve(image: PreparedImage): void;
  reject(err: Error): void;
}

interface Child {
  proc: ChildProcess;
  /** Requests to the child (its fd 3) and replies from it (its fd 4). */
  requests: Writable;
  replies: Readable;
  /** False once the child is ending or its pipes failed: nothing more is sent to it. */
  usable: boolean;
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
      spec,
      limits: { maxInputPixels: limits.maxInputPixels, allowedFormats: [...limits.allowedFormats] },
    };
    return new Promise<PreparedImage>((resolve, reject) => {
      child.pending.set(id, { resolve, reject });
      // The bytes are written as they are, not copied: the route keeps the body until this promise settles, which
      // is after the child has read them (its reply) or has exited.
      child.requests.write(frameHead(request, bytes.length));
      child.requests.write(bytes);
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
            // The child exits when its input pipe closes; one that does not within a second is killed.
            c.usable = false;
            c.requests.end();
            const kill = setTimeout(() => c.proc.kill('SIGKILL'), 1_000);
            kill.unref();
          }),
      ),
    );
  }

  private pick(): Child | undefined {
    let best: Child | undefined;
    for (const c of this.children) {
      if (!c.ready || !c.usable) continue;
      if (best === undefined || c.pending.size < best.pending.size) best = c;
    }
    return best;
  }

  private spawn(): void {
    const url = this.childUrl;
    // From sources (tests, tsx) the child is a .ts file and needs tsx's loader; built, it is plain JavaScript.
    const execArgv = url.pathname.endsWith('.ts') ? ['--import', import.meta.resolve('tsx')] : [];
    const proc = spawn(process.execPath, [...execArgv, fileURLToPath(url)], {
      env: { ...process.env, OCULAR_PREPROCESS_INIT: JSON.stringify(this.init), UV_THREADPOOL_SIZE: '1' },
      stdio: ['ignore', 'inherit', 'inherit', 'pipe', 'pipe'],
    });
    const requests = proc.stdio[3] as Writable;
    const replies = proc.stdio[4] as Readable;
    const child: Child = { proc, requests, replies, usable: true, ready: false, startedAt: performance.now(), pending: new Map() };
    this.children.add(child);
    const reader = new FrameReader(
      MAX_REPLY_BYTES,
      (header, payload) => this.onReply(child, header, payload),
      (err) => this.endMalformed(child, err.message),
    );
    replies.on('data', (chunk: Buffer) => reader.push(chunk));
    // A pipe fails when the child dies (EPIPE and the like): its exit settles what it had open.
    const broken = () => {
      child.usable = false;
    };
    requests.on('error', broken);
    replies.on('error', broken);
    proc.on('error', (err) => {
      child.usable = false;
      this.opts.logger.error({ err, pid: proc.pid }, 'preprocessing process error');
    });
    proc.on('exit', (code, signal) => this.onExit(child, code, signal));
  }

  private endMalformed(child: Child, why: string): void {
    child.usable = false;
    this.opts.logger.error({ pid: child.proc.pid, why }, 'preprocessing process sent a malformed reply: ending it');
    child.proc.kill('SIGKILL');
  }

  private onReply(child: Child, header: unknown, payload: Buffer): void {
    const reply = parseChildReply(header, payload);
    if (reply === undefined) {
      this.endMalformed(child, 'the reply does not match the protocol');
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
    pending.resolve({ pixels: payload, width: reply.width, height: reply.height, transform: reply.transform });
  }

  private onExit(child: Child, code: number | null, signal: NodeJS.Signals | null): void {
    child.usable = false;
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
