/**
 * A preprocessing process (see process-pool.ts): prepares images with the same `prepareImage` as the server, for
 * its parent. Requests arrive as frames (frames.ts) on fd 3, replies leave on fd 4. It answers every request it
 * reads, an OcularError as its code and detail, and exits once its input pipe has closed and every request read is
 * answered. SIGINT and SIGTERM are ignored: a terminal's Ctrl-C reaches the whole process group, and the parent,
 * which drains its accepted requests first, is the one to end this process.
 */
import { Socket } from 'node:net';
import { setPriority } from 'node:os';
import { OcularError } from '../../errors.js';
import { FrameReader, frameHead } from './frames.js';
import type { PreparedImage } from '../types.js';
import { prepareImage } from './image.js';
import { configureSharp } from './sharp-config.js';
import { CHILD_ERROR_CODES, ChildInitSchema, MAX_REQUEST_BYTES, type ChildErrorCode, type ChildReply, type ChildRequest } from './process-protocol.js';

const init = ChildInitSchema.parse(JSON.parse(process.env.OCULAR_PREPROCESS_INIT ?? '{}'));
configureSharp(init.imageFormats, { threadsPerImage: 1 });
if (init.nice > 0) {
  try {
    setPriority(init.nice);
  } catch {
    // Not permitted (or not Linux): the process keeps the parent's priority.
  }
}

process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});

// Sockets over the pipes (libuv streams): an fs stream would block one of the libuv threads sharp decodes on.
const input = new Socket({ fd: 3, readable: true, writable: false });
const output = new Socket({ fd: 4, readable: false, writable: true });
// The parent gone (its end of a pipe broken): there is nobody to answer.
output.on('error', () => process.exit(0));
input.on('error', () => process.exit(0));

let open = 0;
let inputEnded = false;
/** Once the parent has closed our input and every request read is answered and flushed. */
function exitWhenDone(): void {
  if (inputEnded && open === 0) output.end(() => process.exit(0));
}
input.on('end', () => {
  inputEnded = true;
  exitWhenDone();
});

function reply(header: ChildReply, payload?: Uint8Array): void {
  output.write(frameHead(header, payload?.length ?? 0));
  if (payload !== undefined && payload.length > 0) output.write(payload);
}

function fail(id: number, err: unknown): void {
  const known = err instanceof OcularError && (CHILD_ERROR_CODES as readonly string[]).includes(err.code);
  reply({
    id,
    ok: false,
    code: known ? (err.code as ChildErrorCode) : 'INTERNAL',
    detail: (known ? err.message : `preprocessing failed: ${err instanceof Error ? err.message : String(err)}`).slice(0, 2_000),
  });
}

function handle(request: ChildRequest, bytes: Buffer): void {
  open++;
  let work: Promise<PreparedImage>;
  try {
    work = prepareImage(bytes, request.spec, {
      maxInputPixels: request.limits.maxInputPixels,
      allowedFormats: new Set(request.limits.allowedFormats),
      maxJpegScans: request.limits.maxJpegScans,
      decodeTimeoutMs: request.limits.decodeTimeoutMs,
    });
  } catch (err) {
    work = Promise.reject(err);
  }
  work
    .then(
      (prepared) =>
        reply(
          { id: request.id, ok: true, width: prepared.width, height: prepared.height, transform: prepared.transform },
          prepared.pixels,
        ),
      (err: unknown) => fail(request.id, err),
    )
    .finally(() => {
      open--;
      exitWhenDone();
    });
}

// The parent sends only bodies up to MAX_REQUEST_BYTES (process-pool.ts).
const reader = new FrameReader(
  (header, payloadLength) => {
    const h = header as Partial<ChildRequest> | null;
    const wellFormed = typeof h?.id === 'number' && typeof h.spec === 'object' && Array.isArray(h.limits?.allowedFormats);
    if (!wellFormed) return 'a request without id, spec or limits';
    return payloadLength <= MAX_REQUEST_BYTES ? undefined : `a request of ${payloadLength} bytes`;
  },
  (header, payload) => handle(header as ChildRequest, payload),
  (err) => {
    process.stderr.write(`preprocessing process: ${err.message}\n`);
    process.exit(1);
  },
);
input.on('data', (chunk: Buffer) => reader.push(chunk));

reply({ ready: true });
