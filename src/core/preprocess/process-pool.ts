import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { InputSpec } from '../../config/input-spec.js';
import type { PreparedImage } from '../types.js';
import { OcularError } from '../../errors.js';
import type { Logger } from '../logger.js';
import type { ImageFormat } from '../../config/image-formats.js';
import { decodeTimeoutError, prepareImage, type DecodeLimits } from './image.js';
import { FrameReader, frameHead } from './frames.js';
import { MAX_REQUEST_BYTES, parseChildReply, replyMismatch, type ChildInit, type ChildReply, type ChildRequest } from './process-protocol.js';

/**
 * Image preparation (decode, resize, letterbox) in a pool of child processes.
 *
 * Why processes: libvips, under sharp, takes process-wide locks (GLib mutexes, then futexes) for every operation it
 * builds, so on a many-core GPU host threads of one process stop scaling long before the GPU is busy, and processes
 * do not (docs/PERFORMANCE.md, "GPU").
 *
 * The parent sends the image bytes and the model's input spec; the child answers the resized RGB pixels and the
 * transform (about 0.5 MB for a 416 x 416 input) or an error from the catalog, as frames on a pipe each way
 * (frames.ts). What comes back is checked (process-protocol.ts): the child decodes hostile bytes. Each request goes
 * to the ready child with the fewest requests open. While no child is ready (at startup, after a crash, once the
 * pool is closed) images are prepared in this process as before, so a request is never refused for want of a child.
 *
 * A child that exits unexpectedly fails only the requests it had open (500 INTERNAL: the process died under them)
 * and is started again, after a delay that doubles while that slot's child keeps dying young. A child that keeps a
 * request past `requestTimeoutMs`, closes its reply pipe, or sends anything but a reply that fits its request is
 * killed, which comes to the same. `requestTimeoutMs` counts from the child's last answer (or the request's sending,
 * whichever is later): a child answers its requests one after another, so a long queue in a child is not a stuck
 * child; the request it was stuck on is answered IMAGE_TOO_COMPLEX (the image, not the server, is at fault), the
 * others it held 500 INTERNAL. The server sets it to the decode time limit plus a margin. A child that cannot be started at all (no file descriptors, no memory, a
 * process limit) is retried the same way; the server never fails for it.
 */

export interface PreprocessPoolOptions {
  processes: number;
  imageFormats: readonly ImageFormat[];
  /** Linux nice value of the children (the server's OCULAR_COMPUTE_NICE), so the event loop comes first. */
  nice?: number;
  logger: Pick<Logger, 'info' | 'error'>;
  /** A child holding requests that answers none in this long is ended (default 30 s). */
  requestTimeoutMs?: number;
  /** Called when a child exits, or cannot be started, without being asked to (a metric counts them). */
  onUnexpectedExit?: () => void;
  /** Child entry point; tests point it elsewhere. Default: process-child next to this file. */
  childUrl?: URL;
  /** The node binary the children run (default this process's); tests give a missing one. */
  execPath?: string;
}

export interface PreprocessPoolStats {
  /** Children started and ready. */
  ready: number;
  /** Requests sent to a child and not yet settled. */
  open: number;
  /** Children that exited, or could not be started, without being asked to. */
  exits: number;
  /** Requests prepared in this process because no child was ready. */
  inProcess: number;
}

const CHILD_URL = new URL('./process-child' + extname(fileURLToPath(import.meta.url)), import.meta.url);
/** A child that dies within this long of its start counts as dying young (its slot's restart delay doubles). */
const YOUNG_MS = 10_000;
const RESTART_MIN_MS = 500;
const RESTART_MAX_MS = 30_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

interface Pending {
  spec: InputSpec;
  maxInputPixels: number;
  sentAt: number;
  /** The write of the image bytes has completed: libuv no longer reads the caller's buffer. */
  written: boolean;
  /** The decode time limit the request was sent with (its answer when the child is ended for a timeout). */
  decodeTimeoutMs: number | undefined;
  /** The child was ended while working on this request, for taking too long. */
  timedOut: boolean;
  /** The child's answer, kept until `written` (a reply can overtake the write's callback). */
  outcome?: { image: PreparedImage } | { error: Error };
  resolve(image: PreparedImage): void;
  reject(err: Error): void;
}

interface Child {
  slot: Slot;
  proc: ChildProcess;
  /** Requests to the child (its fd 3). */
  requests: Writable;
  /** False once the child is ending, condemned or its pipes failed: nothing more is sent to it. */
  usable: boolean;
  /** Killed for a protocol breach or a timeout: what it still sends is ignored. */
  condemned: boolean;
  ready: boolean;
  ended: boolean;
  startedAt: number;
  /** When the child last answered a request (or started). */
  lastReplyAt: number;
  pending: Map<number, Pending>;
}

/** A place for one child; its restart delay is its own, so one slot's crashes do not slow the others. */
interface Slot {
  child: Child | undefined;
  restartDelayMs: number;
  timer: NodeJS.Timeout | undefined;
}

export class PreprocessPool {
  private readonly slots: Slot[] = [];
  private nextId = 1;
  private closing = false;
  private exits = 0;
  private inProcess = 0;
  private readonly init: ChildInit;
  private readonly childUrl: URL;
  private readonly requestTimeoutMs: number;
  private readonly sweep: NodeJS.Timeout;

  constructor(private readonly opts: PreprocessPoolOptions) {
    if (!Number.isInteger(opts.processes) || opts.processes < 0) throw new RangeError(`processes must be a whole number >= 0, got ${opts.processes}`);
    this.init = { imageFormats: [...opts.imageFormats], nice: opts.nice ?? 0 };
    this.childUrl = opts.childUrl ?? CHILD_URL;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    for (let i = 0; i < opts.processes; i++) {
      const slot: Slot = { child: undefined, restartDelayMs: RESTART_MIN_MS, timer: undefined };
      this.slots.push(slot);
      this.start(slot);
    }
    // Requests past their deadline end their child; checked a few times per deadline.
    this.sweep = setInterval(() => this.endOverdue(), Math.max(10, Math.min(1_000, this.requestTimeoutMs / 4)));
    this.sweep.unref();
  }

  get size(): number {
    return this.opts.processes;
  }

  stats(): PreprocessPoolStats {
    let ready = 0;
    let open = 0;
    for (const c of this.children()) {
      if (c.ready && c.usable) ready++;
      open += c.pending.size;
    }
    return { ready, open, exits: this.exits, inProcess: this.inProcess };
  }

  /** The children's process ids (running, ready or not). */
  pids(): number[] {
    return this.children().flatMap((c) => (c.proc.pid !== undefined ? [c.proc.pid] : []));
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
  prepare(bytes: Buffer, spec: InputSpec, limits: DecodeLimits, signal?: AbortSignal): Promise<PreparedImage> {
    // The client has left: nothing is sent to a child for it.
    if (signal?.aborted === true) return Promise.reject(new OcularError('CLIENT_CLOSED_REQUEST'));
    // A body over what a child takes is prepared here.
    const child = bytes.length <= MAX_REQUEST_BYTES ? this.pick() : undefined;
    if (child === undefined) {
      if (this.opts.processes > 0) this.inProcess++;
      return prepareImage(bytes, spec, limits);
    }
    const id = this.nextId++;
    const request: ChildRequest = {
      id,
      spec,
      limits: {
        maxInputPixels: limits.maxInputPixels,
        allowedFormats: [...limits.allowedFormats],
        ...(limits.maxJpegScans !== undefined ? { maxJpegScans: limits.maxJpegScans } : {}),
        ...(limits.decodeTimeoutMs !== undefined ? { decodeTimeoutMs: limits.decodeTimeoutMs } : {}),
      },
    };
    const head = frameHead(request, bytes.length);
    return new Promise<PreparedImage>((resolve, reject) => {
      const pending: Pending = {
        spec,
        maxInputPixels: limits.maxInputPixels,
        sentAt: performance.now(),
        written: false,
        decodeTimeoutMs: limits.decodeTimeoutMs,
        timedOut: false,
        resolve,
        reject,
      };
      child.pending.set(id, pending);
      child.requests.write(head);
      // The bytes are written as they are, not copied: the caller (the route) may reuse the buffer once this promise
      // settles, so it settles only after this write has completed (or failed: then nothing reads the buffer).
      child.requests.write(bytes, () => {
        pending.written = true;
        this.settle(child, id, pending);
      });
    });
  }

  /**
   * Stops sending to the children (later images are prepared here), lets their open requests finish (at most
   * `timeoutMs`), then closes their input: each exits once it has answered what it had. One still running a second
   * later is killed. Resolves once every child has exited.
   */
  async close(timeoutMs = 5_000): Promise<void> {
    this.closing = true;
    clearInterval(this.sweep);
    for (const slot of this.slots) {
      if (slot.timer !== undefined) clearTimeout(slot.timer);
      slot.timer = undefined;
    }
    const deadline = performance.now() + timeoutMs;
    while (this.stats().open > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await Promise.all(
      this.children().map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.ended) {
              resolve();
              return;
            }
            c.proc.once('close', () => resolve());
            c.usable = false;
            c.requests.end();
            const kill = setTimeout(() => c.proc.kill('SIGKILL'), 1_000);
            kill.unref();
          }),
      ),
    );
  }

  private children(): Child[] {
    return this.slots.flatMap((s) => (s.child !== undefined ? [s.child] : []));
  }

  private pick(): Child | undefined {
    if (this.closing) return undefined;
    let best: Child | undefined;
    for (const c of this.children()) {
      if (!c.ready || !c.usable) continue;
      if (best === undefined || c.pending.size < best.pending.size) best = c;
    }
    return best;
  }

  private start(slot: Slot): void {
    slot.timer = undefined;
    if (this.closing) return;
    const url = this.childUrl;
    // From sources (tests, tsx) the child is a .ts file and needs tsx's loader; built, it is plain JavaScript.
    const execArgv = url.pathname.endsWith('.ts') ? ['--import', import.meta.resolve('tsx')] : [];
    let proc: ChildProcess;
    try {
      proc = spawn(this.opts.execPath ?? process.execPath, [...execArgv, fileURLToPath(url)], {
        env: { ...process.env, OCULAR_PREPROCESS_INIT: JSON.stringify(this.init), UV_THREADPOOL_SIZE: '1' },
        stdio: ['ignore', 'inherit', 'inherit', 'pipe', 'pipe'],
      });
    } catch (err) {
      // ENOMEM and the like throw; the server goes on preparing images itself and tries again later.
      this.startFailed(slot, err);
      return;
    }
    const requests = proc.stdio?.[3] as Writable | null | undefined;
    const replies = proc.stdio?.[4] as Readable | null | undefined;
    if (requests == null || replies == null) {
      // EMFILE: Node gives a process object without pipes (and an 'error' event to come).
      proc.on('error', () => {});
      if (proc.pid !== undefined) proc.kill('SIGKILL');
      this.startFailed(slot, new Error('the child process got no pipes (out of file descriptors?)'));
      return;
    }
    const child: Child = {
      slot,
      proc,
      requests,
      usable: true,
      condemned: false,
      ready: false,
      ended: false,
      startedAt: performance.now(),
      lastReplyAt: performance.now(),
      pending: new Map(),
    };
    slot.child = child;
    let reply: ChildReply | undefined;
    const reader = new FrameReader(
      (header, payloadLength) => {
        reply = parseChildReply(header);
        if (reply === undefined) return 'the reply does not match the protocol';
        return this.mismatch(child, reply, payloadLength);
      },
      (_header, payload) => {
        if (reply !== undefined) this.onReply(child, reply, payload);
      },
      (err) => this.condemn(child, err.message),
    );
    replies.on('data', (chunk: Buffer) => {
      if (!child.condemned) reader.push(chunk);
    });
    // A child that closes its reply pipe but lives on would never answer again.
    // (The pipe also ends when the child exits: only one still running a second later is ended.)
    replies.on('end', () => {
      const check = setTimeout(() => {
        if (!child.ended && !child.condemned && !this.closing) this.condemn(child, 'it closed its reply pipe');
      }, 1_000);
      check.unref();
    });
    // A pipe fails when the child dies (EPIPE and the like): its exit settles what it had open.
    const broken = () => {
      child.usable = false;
    };
    requests.on('error', broken);
    replies.on('error', broken);
    proc.on('error', (err) => {
      child.usable = false;
      this.opts.logger.error({ err, pid: proc.pid }, 'preprocessing process error');
      // EAGAIN, ENOENT, EACCES: no process was started, and no 'exit' or 'close' will come.
      if (proc.pid === undefined) this.onEnd(child, null, null, err);
    });
    // 'close', not 'exit': by then the reply pipe is drained, so a reply written before dying is not lost.
    proc.on('close', (code, signal) => this.onEnd(child, code, signal));
  }

  private startFailed(slot: Slot, err: unknown): void {
    this.exits++;
    this.opts.onUnexpectedExit?.();
    slot.restartDelayMs = Math.min(RESTART_MAX_MS, slot.restartDelayMs * 2);
    this.opts.logger.error({ err, restartInMs: slot.restartDelayMs }, 'preprocessing process could not be started');
    this.scheduleStart(slot, slot.restartDelayMs);
  }

  private scheduleStart(slot: Slot, delayMs: number): void {
    if (this.closing) return;
    slot.timer = setTimeout(() => this.start(slot), delayMs);
  }

  /** Why a reply header (with its payload's length) cannot be taken from this child, or undefined. */
  private mismatch(child: Child, reply: ChildReply, payloadLength: number): string | undefined {
    if ('ready' in reply) return payloadLength === 0 ? undefined : 'a ready message with a payload';
    const pending = child.pending.get(reply.id);
    if (pending === undefined || pending.outcome !== undefined) return `a reply to request ${reply.id}, which is not open`;
    if (!reply.ok) return payloadLength === 0 ? undefined : 'an error reply with a payload';
    return replyMismatch(reply, pending.spec, pending.maxInputPixels, payloadLength);
  }

  private onReply(child: Child, reply: ChildReply, payload: Buffer): void {
    if (child.condemned) return;
    if ('ready' in reply) {
      child.ready = true;
      return;
    }
    const pending = child.pending.get(reply.id);
    if (pending === undefined) return;
    child.lastReplyAt = performance.now();
    pending.outcome = reply.ok
      ? { image: { pixels: payload, width: reply.width, height: reply.height, transform: reply.transform } }
      : { error: new OcularError(reply.code, reply.detail) };
    this.settle(child, reply.id, pending);
  }

  /** Settles a request once both its answer is in and its bytes are written. */
  private settle(child: Child, id: number, pending: Pending): void {
    if (!pending.written || pending.outcome === undefined) return;
    if (child.pending.get(id) !== pending) return;
    child.pending.delete(id);
    if ('image' in pending.outcome) pending.resolve(pending.outcome.image);
    else pending.reject(pending.outcome.error);
  }

  /** Ends a child that broke the protocol or stopped answering; its exit fails what it had open. */
  private condemn(child: Child, why: string): void {
    if (child.condemned) return;
    child.condemned = true;
    child.usable = false;
    this.opts.logger.error({ pid: child.proc.pid, why }, 'preprocessing process misbehaved: ending it');
    child.proc.kill('SIGKILL');
  }

  private endOverdue(): void {
    const now = performance.now();
    for (const c of this.children()) {
      if (c.condemned) continue;
      // Answered or not: a request whose bytes the child never read is overdue too. The oldest open request is
      // the one the child works on (it answers in order, one at a time).
      const oldest = c.pending.values().next().value;
      if (oldest === undefined) continue;
      if (now - Math.max(oldest.sentAt, c.lastReplyAt) > this.requestTimeoutMs) {
        oldest.timedOut = true;
        this.condemn(c, `a request unanswered after ${this.requestTimeoutMs} ms`);
      }
    }
  }

  private onEnd(child: Child, code: number | null, signal: NodeJS.Signals | null, startError?: Error): void {
    if (child.ended) return;
    child.ended = true;
    child.usable = false;
    const slot = child.slot;
    if (slot.child === child) slot.child = undefined;
    const lost = child.pending.size;
    const why = startError !== undefined ? `could not be started: ${startError.message}` : `exited (${signal ?? `code ${code}`})`;
    for (const p of child.pending.values()) {
      if (p.timedOut && p.decodeTimeoutMs !== undefined) p.reject(decodeTimeoutError(p.decodeTimeoutMs));
      else p.reject(new OcularError('INTERNAL', `the preprocessing process ${why} while preparing the image`));
    }
    child.pending.clear();
    if (this.closing) {
      this.opts.logger.info({ pid: child.proc.pid, code, signal }, 'preprocessing process ended');
      return;
    }
    this.exits++;
    this.opts.onUnexpectedExit?.();
    const young = startError !== undefined || performance.now() - child.startedAt < YOUNG_MS;
    slot.restartDelayMs = young ? Math.min(RESTART_MAX_MS, slot.restartDelayMs * 2) : RESTART_MIN_MS;
    this.opts.logger.error({ pid: child.proc.pid, code, signal, lost, restartInMs: slot.restartDelayMs }, 'preprocessing process exited');
    this.scheduleStart(slot, slot.restartDelayMs);
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
