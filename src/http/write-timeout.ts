import { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';

/**
 * The write timeout of every answer: from the moment an answer starts to be sent, a connection on which nothing
 * is written for `timeoutMs` (the client reads nothing, so the socket's buffers stay full) is destroyed, which
 * ends the answer's stream and frees what it held. A client that reads, however slowly, makes progress and keeps
 * its connection. It is the socket's idle timeout while the answer is written: Node sets the keep-alive timeout
 * on the socket once the answer is finished, and clears it at the next request.
 */
export function registerWriteTimeout(app: FastifyInstance, timeoutMs: number): void {
  app.addHook('onSend', async (request, reply, payload) => {
    const socket = request.raw.socket;
    // app.inject's requests have no real socket, and nothing to time out.
    if (socket instanceof Socket && !socket.destroyed) {
      reply.raw.setTimeout(timeoutMs, () => {
        request.log.warn({ timeoutMs, bytesWritten: socket.bytesWritten }, 'answer not read in time: connection closed');
        socket.destroy();
      });
    }
    return payload;
  });
}
