/**
 * A preprocessing process (see process-pool.ts): prepares images with the same `prepareImage` as the server, for
 * its parent, over the IPC channel. It answers every request it reads, an OcularError as its code and detail, and
 * exits once the channel closes. SIGINT and SIGTERM are ignored: a terminal's Ctrl-C reaches the whole process
 * group, and the parent, which drains its accepted requests first, is the one to end this process.
 */
import { setPriority } from 'node:os';
import { OcularError } from '../../errors.js';
import { configureSharp, prepareImage, type DecodeLimits } from './image.js';
import { CHILD_ERROR_CODES, ChildInitSchema, type ChildErrorCode, type ChildReply, type ChildRequest } from './process-protocol.js';

function reply(message: ChildReply): void {
  // The channel is gone when the parent died: nothing to answer to, and 'disconnect' ends this process.
  if (process.connected) process.send?.(message);
}

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
process.on('disconnect', () => process.exit(0));

process.on('message', (raw: unknown) => {
  const request = raw as ChildRequest;
  const limits: DecodeLimits = {
    maxInputPixels: request.limits.maxInputPixels,
    allowedFormats: new Set(request.limits.allowedFormats),
  };
  const bytes = Buffer.from(request.bytes.buffer, request.bytes.byteOffset, request.bytes.byteLength);
  prepareImage(bytes, request.spec, limits).then(
    (prepared) =>
      reply({
        id: request.id,
        ok: true,
        pixels: prepared.pixels,
        width: prepared.width,
        height: prepared.height,
        transform: prepared.transform,
      }),
    (err: unknown) => {
      const known = err instanceof OcularError && (CHILD_ERROR_CODES as readonly string[]).includes(err.code);
      reply({
        id: request.id,
        ok: false,
        code: known ? (err.code as ChildErrorCode) : 'INTERNAL',
        detail: known ? err.message : `preprocessing failed: ${err instanceof Error ? err.message : String(err)}`,
      });
    },
  );
});

reply({ ready: true });
