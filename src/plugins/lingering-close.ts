import type { IncomingMessage, Server } from 'node:http';
import { Socket } from 'node:net';

/**
 * Lingering close (after nginx's `lingering_close`). An answer sent before its request's body has all arrived (a
 * refusal decided from the headers, a body cut off at a limit) says `Connection: close`, and Node then ends the
 * connection with `socket.destroySoon()` once the answer is written: FIN, then close. A close while the client is
 * still sending leaves unread bytes in the kernel's receive buffer, so the kernel answers them with a reset (RST),
 * and a reset that reaches the client before it has read the answer makes its kernel drop the answer: the client
 * sees a reset connection, never the 503 or 404 that would have told it why.
 *
 * So on a connection whose request body is still arriving, the close lingers: the answer, then FIN (the client
 * reads the answer and stops sending), and whatever the client still sends is read and discarded until it closes
 * its side, the body ends, `maxBytes` more bytes were discarded, or `maxMs` passed; then the socket is destroyed.
 * A hostile client that keeps sending holds the connection (under the connection cap) at most that long, and costs
 * at most `maxBytes` of reading; nothing it sends is kept. A connection whose request is complete closes as before.
 */

export interface LingerBounds {
  /** Longest a closing connection is read and discarded for. */
  maxMs: number;
  /** Most bytes discarded from a closing connection. */
  maxBytes: number;
}

/** A few seconds and a few MiB: time for a client to read its answer and stop, too little to be worth holding. */
export const LINGER_BOUNDS: LingerBounds = { maxMs: 3_000, maxBytes: 4 * 1024 * 1024 };

/** Ends `socket` after its answer, reading and discarding the rest of `req`'s body for at most `bounds`. */
function lingerThenClose(socket: Socket, req: IncomingMessage, { maxMs, maxBytes }: LingerBounds): void {
  // The answer is written: FIN follows it, and the socket stays readable (Node's HTTP server allows half-open).
  socket.end();
  let discarded = 0;
  const close = (): void => {
    clearTimeout(timer);
    socket.destroy();
  };
  const timer = setTimeout(close, maxMs);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  // As Node's own discard of an unread body (IncomingMessage._dump): whoever read the body has given up on it.
  req.removeAllListeners('data');
  req.on('data', (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > maxBytes) close();
  });
  // The whole body read: nothing left to be reset. The client going away (aborted) ends it too.
  req.once('end', close);
  req.on('error', close);
  req.resume();
  socket.resume();
}

/**
 * Makes every connection of `server` linger on close while its request's body is still arriving. Node's HTTP server
 * closes a connection after an answer with `Connection: close` through `socket.destroySoon()` (its resOnFinish);
 * that method is replaced on each connection by one that lingers when the connection's latest request is
 * incomplete (the body on the wire is always the latest request's) and closes as before otherwise.
 */
export function lingerOnClose(server: Server, bounds: LingerBounds = LINGER_BOUNDS): void {
  const latest = new WeakMap<Socket, IncomingMessage>();
  server.on('request', (req: IncomingMessage) => {
    const socket = req.socket;
    if (!(socket instanceof Socket)) return;
    if (!latest.has(socket)) {
      socket.destroySoon = function destroySoonLingering(this: Socket): void {
        const current = latest.get(socket);
        if (current === undefined || current.complete || current.destroyed || socket.destroyed || !socket.writable) {
          Socket.prototype.destroySoon.call(this);
          return;
        }
        lingerThenClose(socket, current, bounds);
      };
    }
    latest.set(socket, req);
  });
}
