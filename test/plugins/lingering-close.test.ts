/**
 * Lingering close (src/plugins/lingering-close.ts): an answer sent while its request's body is still arriving
 * reaches the client, instead of being lost to the reset a plain close sends back to a client still uploading; and
 * the lingering is bounded in bytes and in time, whatever the client does. A bare Node HTTP server that answers
 * 503 `Connection: close` after reading part of the body, as Ocular's refusals do.
 */
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import t from 'tap';
import { LINGER_BOUNDS, lingerOnClose, type LingerBounds } from '../../src/plugins/lingering-close.js';

t.setTimeout(120_000);

const MiB = 1024 * 1024;

interface Refusing {
  server: Server;
  port: number;
  /** Resolves when the latest answer is written (Node then closes the connection, or lingers). */
  answered: () => Promise<void>;
  /** Resolves when the server's end of its latest connection is closed. */
  closed: () => Promise<void>;
}

/** A server that reads `readBytes` of each body, stops reading it and answers 503 with Connection: close. */
async function refusingServer(bounds: LingerBounds, readBytes = MiB): Promise<Refusing> {
  let answered: Promise<void> = Promise.resolve();
  const server = createServer((req, res) => {
    answered = new Promise((resolve) => res.once('finish', () => resolve()));
    let read = 0;
    const refuse = (): void => {
      req.removeListener('data', onData);
      req.pause();
      res.writeHead(503, { connection: 'close', 'content-type': 'text/plain', 'content-length': '4' });
      res.end('busy');
    };
    const onData = (chunk: Buffer): void => {
      read += chunk.length;
      if (read >= readBytes) refuse();
    };
    if (readBytes === 0) refuse();
    else req.on('data', onData);
  });
  lingerOnClose(server, bounds);
  let latest: Promise<void> = Promise.resolve();
  server.on('connection', (socket) => (latest = new Promise((resolve) => socket.once('close', () => resolve()))));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { server, port: address.port, answered: () => answered, closed: () => latest };
}

interface Outcome {
  status: number;
  sent: number;
}

/**
 * Uploads a body of `declared` bytes (or chunked) and keeps sending until the connection closes. With `stubborn`,
 * the client ignores the answer and the server's FIN (it stays half-open and sends on).
 */
function upload(port: number, opts: { chunked: boolean; declared: number; stubborn?: boolean }): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: opts.stubborn === true });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    const framed = Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]);
    let raw = '';
    let sent = 0;
    let closed = false;
    const pump = (): void => {
      while (!closed && sent < opts.declared) {
        sent += chunk.length;
        if (!socket.write(opts.chunked ? framed : chunk)) {
          socket.once('drain', pump);
          return;
        }
      }
    };
    socket.on('connect', () => {
      const length = opts.chunked ? 'transfer-encoding: chunked' : `content-length: ${opts.declared}`;
      socket.write(`POST / HTTP/1.1\r\nhost: 127.0.0.1\r\n${length}\r\n\r\n`);
      pump();
    });
    socket.on('data', (d: Buffer) => (raw += d.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => {
      closed = true;
      resolve({ status: Number(raw.split(' ')[1] ?? 0), sent });
    });
  });
}

/** Sends `stallAfter` bytes of a chunked body, then nothing, its connection held open (half-open after the server's FIN). */
function uploadStalled(port: number, stallAfter: number): { socket: Socket; outcome: { answered: Promise<number> } } {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  const framed = Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]);
  socket.on('connect', () => {
    socket.write(`POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n`);
    for (let sent = 0; sent < stallAfter; sent += chunk.length) socket.write(framed);
  });
  socket.on('error', () => {});
  let raw = '';
  const answered = new Promise<number>((resolve) => {
    socket.on('data', (d: Buffer) => {
      raw += d.toString('latin1');
      if (raw.includes('\r\n\r\n')) resolve(Number(raw.split(' ')[1] ?? 0));
    });
    socket.on('close', () => resolve(Number(raw.split(' ')[1] ?? 0)));
  });
  return { socket, outcome: { answered } };
}

t.test('a client that sends on after its answer was written, before reading it, still reads it', async (t) => {
  const { server, port, answered } = await refusingServer(LINGER_BOUNDS);
  t.teardown(() => server.close());
  for (const chunked of [true, false]) {
    // 3 MiB sent, 1 MiB of it read, then the answer. The client reads nothing until it has sent one more piece
    // after the answer was written: a plain close has reset the connection by then, so that write fails (EPIPE)
    // and the client's socket is destroyed with the answer unread. Lingering reads and discards the piece.
    const socket = connect({ port, host: '127.0.0.1' });
    socket.pause();
    const piece = (bytes: number): Buffer => (chunked ? Buffer.concat([Buffer.from(`${bytes.toString(16)}\r\n`), Buffer.alloc(bytes, 0x20), Buffer.from('\r\n')]) : Buffer.alloc(bytes, 0x20));
    let raw = '';
    let error = '';
    socket.on('data', (d: Buffer) => (raw += d.toString('latin1')));
    socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    await new Promise<void>((resolve) => socket.on('connect', () => resolve()));
    socket.write(`POST / HTTP/1.1\r\nhost: 127.0.0.1\r\n${chunked ? 'transfer-encoding: chunked' : `content-length: ${64 * MiB}`}\r\n\r\n`);
    socket.write(piece(3 * MiB));
    await answered();
    await new Promise((resolve) => setTimeout(resolve, 50));
    socket.write(piece(64 * 1024));
    await new Promise((resolve) => setTimeout(resolve, 50));
    socket.resume();
    await closed;
    const kind = chunked ? 'chunked' : 'declared';
    t.equal(error, '', `${kind}: no write failed`);
    t.match(raw, /^HTTP\/1\.1 503 .*\r\n\r\nbusy$/s, `${kind}: the client read its answer`);
  }
});

t.test('a client that ignores the answer and sends on is cut off after the byte bound', async (t) => {
  const { server, port } = await refusingServer({ maxMs: 600_000, maxBytes: 2 * MiB });
  t.teardown(() => server.close());
  const declared = 1024 * MiB;
  const res = await upload(port, { chunked: false, declared, stubborn: true });
  t.equal(res.status, 503, 'it got its answer');
  // Read before the answer (4 MiB), discarded after it (2 MiB), and what the kernels' buffers held.
  t.ok(res.sent < 64 * MiB, `closed after ${(res.sent / MiB).toFixed(1)} MiB of ${declared / MiB} MiB, long before the time bound`);
});

t.test('a client that stops sending but holds its connection is closed after the time bound', async (t) => {
  const { server, port, closed } = await refusingServer({ maxMs: 200, maxBytes: 1024 * MiB });
  t.teardown(() => server.close());
  const { socket, outcome } = uploadStalled(port, 2 * MiB);
  const answered = await outcome.answered;
  t.equal(answered, 503, 'it got its answer');
  const cut = await Promise.race([closed().then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 30_000).unref())]);
  t.ok(cut, 'the server closed the connection, the client holding its side open and sending nothing');
  socket.destroy();
});

t.test('an answer before any byte of the body was read closes its connection within the bound', async (t) => {
  const { server, port } = await refusingServer({ maxMs: 3_000, maxBytes: 4 * MiB }, 0);
  t.teardown(() => server.close());
  for (const chunked of [true, false]) {
    const res = await upload(port, { chunked, declared: 64 * MiB });
    t.equal(res.status, 503, `${chunked ? 'chunked' : 'declared'}: answered`);
    t.ok(res.sent < 64 * MiB, `${chunked ? 'chunked' : 'declared'}: and closed after ${(res.sent / MiB).toFixed(1)} MiB`);
  }
});
