/**
 * A preprocessing process (see process-pool.ts): prepares images with the same `prepareImage` as the server, for
 * its parent. Requests arrive as frames (frames.ts) on fd 3, replies leave on fd 4. It answers every request it
 * reads, an OcularError as its code and detail, and exits once its input pipe closes. SIGINT and SIGTERM are
 * ignored: a terminal's Ctrl-C reaches the whole process group, and the parent, which drains its accepted requests
 * first, is the one to end this process.
 */
import { Socket } from 'node:net';
import { setPriority } from 'node:os';
import { OcularError } from '../../errors.js';
import { FrameReader, frameHead } from './frames.js';
import { configureSharp, prepareImage, type DecodeLimits } from './image.js';
import { CHILD_ERROR_CODES, ChildInitSchema, type ChildErrorCode, type ChildReply, type ChildRequest } from './process-protocol.js';

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
// The parent gone (its end of a pipe closed): there is nobody to answer.
output.on('error', () => process.exit(0));
input.on('error', () => process.exit(0));
input.on('end', () => process.exit(0));

function reply(header: ChildReply, payload?: Uint8Array): void {
  output.write(frameHead(header, payload?.length ?? 0));
  if (payload !== undefined && payload.length > 0) output.write(payload);
}

function handle(request: ChildRequest, bytes: Buffer): void {
  const limits: DecodeLimits = {
    maxInputPixels: request.limits.maxInputPixels,
    allowedFormats: new Set(request.limits.allowedFormats),
  };
  prepareImage(bytes, request.spec, limits).then(
    (prepared) =>
      reply(
        { id: request.id, ok: true, width: prepared.width, height: prepared.height, transform: prepared.transform },
        prepared.pixels,
      ),
    (err: unknown) => {
      const known = err instanceof OcularError && (CHILD_ERROR_CODES as readonly string[]).includes(err.code);
      reply({
        id: request.id,
        ok: false,
        code: known ? (err.code as ChildErrorCode) : 'INTERNAL',
        detail: (known ? err.message : `preprocessing failed: ${err instanceof Error ? err.message : String(err)}`).slice(0, 2_000),
      });
    },
  );
}

// The parent writes the request bodies it accepted, each at most its body limit: 1 GiB bounds a frame here.
const reader = new FrameReader(
  2 ** 30,
  (header, payload) => handle(header as ChildRequest, payload),
  (err) => {
    process.stderr.write(`preprocessing process: ${err.message}\n`);
    process.exit(1);
  },
);
input.on('data', (chunk: Buffer) => reader.push(chunk));

reply({ ready: true });
