/**
 * The lean load-generator client (scripts/lib/http1-pool.ts) and the loops built on it (scripts/lib/load.ts):
 * every answer is framed and counted by status, whatever the server's framing (Content-Length, chunked, chunks
 * split across reads, `connection: close`), a dead socket or a request the server never answers ends as 'socket'
 * or 'timeout' instead of hanging, bodies go out whole and round-robin, and at most the allowed sockets are open.
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { buildRequest, Http1Pool } from '../../scripts/lib/http1-pool.js';
import { closedLoop, openLoop, type LoadTarget } from '../../scripts/lib/load.js';

interface Seen {
  /** Which server-side connection it came on, numbered from 1 in the order they were accepted. */
  connection: number;
  url: string;
  body: Buffer;
  contentType: string;
}

/** An HTTP server whose answer per path is set by `answer`; records every request it read in full. */
async function serve(
  t: Test,
  answer: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void,
): Promise<{ url: URL; seen: Seen[]; connections: () => number; maxSockets: () => number }> {
  const seen: Seen[] = [];
  const connectionIds = new WeakMap<object, number>();
  let open = 0;
  let max = 0;
  let total = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const connection = connectionIds.get(req.socket) ?? 0;
      seen.push({ connection, url: req.url ?? '', body, contentType: req.headers['content-type'] ?? '' });
      answer(req, res, body);
    });
  });
  server.on('connection', (s) => {
    open++;
    total++;
    connectionIds.set(s, total);
    max = Math.max(max, open);
    s.on('close', () => open--);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address() as AddressInfo;
  return { url: new URL(`http://127.0.0.1:${port}`), seen, connections: () => total, maxSockets: () => max };
}

const json = (res: http.ServerResponse, status: number, value: unknown): void => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
};

t.test('statuses, whatever the framing of the answer', async (t) => {
  const big = 'x'.repeat(200_000); // spans many reads
  const s = await serve(t, (req, res) => {
    switch (req.url) {
      case '/length':
        return json(res, 200, { ok: true });
      case '/chunked': {
        res.writeHead(201, { 'content-type': 'text/plain' }); // no length: Node sends it chunked
        res.write('a');
        setTimeout(() => {
          res.write(big);
          res.end('z');
        }, 5);
        return;
      }
      case '/empty':
        res.writeHead(204);
        return res.end();
      case '/close':
        res.writeHead(503, { connection: 'close', 'content-type': 'application/json' });
        return res.end('{"code":"DRAINING"}');
      default:
        return json(res, 404, { code: 'NOT_FOUND' });
    }
  });
  const pool = new Http1Pool(s.url, 1, 5000);
  t.teardown(() => pool.destroy());
  const body = Buffer.from('payload');
  const send = (path: string) => pool.send(buildRequest(s.url, path, 'application/octet-stream', body));
  // One socket: every answer must be framed exactly, or the next one on the same socket would be misread.
  t.same(
    [await send('/length'), await send('/chunked'), await send('/empty'), await send('/length'), await send('/nope')],
    [200, 201, 204, 200, 404],
  );
  t.equal(s.connections(), 1, 'all on one keep-alive socket');
  t.equal(await send('/close'), 503, 'an answer with connection: close is counted');
  t.equal(await send('/length'), 200, 'and the next request gets a new socket');
  t.equal(s.connections(), 2);
  t.ok(s.seen.every((r) => r.body.equals(body) && r.contentType === 'application/octet-stream'), 'bodies arrive whole, with their type');
});

t.test('a socket the server resets ends as socket; a request never answered ends as timeout', async (t) => {
  const s = await serve(t, (req, res) => {
    if (req.url === '/reset') req.socket.destroy();
    else if (req.url === '/hang') return; // never answered
    else json(res, 200, {});
  });
  const pool = new Http1Pool(s.url, 2, 300);
  t.teardown(() => pool.destroy());
  const send = (path: string) => pool.send(buildRequest(s.url, path, 'text/plain', Buffer.from('x')));
  t.equal(await send('/reset'), 'socket');
  t.equal(await send('/hang'), 'timeout');
  t.equal(await send('/ok'), 200, 'the pool goes on after both');
});

t.test('nothing listening: every request ends as socket, none hangs', async (t) => {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const url = new URL(`http://127.0.0.1:${port}`);
  const pool = new Http1Pool(url, 2, 1000);
  t.teardown(() => pool.destroy());
  const outcomes = await Promise.all([1, 2, 3].map(() => pool.send(buildRequest(url, '/', 'text/plain', Buffer.from('x')))));
  t.same(outcomes, ['socket', 'socket', 'socket']);
});

/** A bare TCP server whose sockets get whatever bytes `onSocket` writes: answers Node's server would never send. */
async function rawServer(t: Test, onSocket: (sock: net.Socket) => void): Promise<{ url: URL; connections: () => number }> {
  let connections = 0;
  const raw = net.createServer((sock) => {
    connections++;
    onSocket(sock);
  });
  await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
  t.teardown(() => raw.close());
  const { port } = raw.address() as AddressInfo;
  return { url: new URL(`http://127.0.0.1:${port}`), connections: () => connections };
}

t.test('an answer this client cannot frame closes the socket and counts as socket', async (t) => {
  const { url } = await rawServer(t, (sock) => {
    sock.once('data', () => sock.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nno length, no chunks'));
  });
  const pool = new Http1Pool(url, 1, 1000);
  t.teardown(() => pool.destroy());
  t.equal(await pool.send(buildRequest(url, '/', 'text/plain', Buffer.from('x'))), 'socket');
});

t.test('a long body is skipped, and an answer nobody asked for retires its socket', async (t) => {
  const long = Buffer.alloc(5_000_000, 'y');
  let requests = 0;
  const { url, connections } = await rawServer(t, (sock) => {
    sock.on('data', () => {
      requests++;
      if (requests === 1) sock.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${long.length}\r\n\r\n`), long]));
      // The second request gets its answer and then one more, unasked.
      else if (requests === 2) sock.write('HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
      else sock.write('HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n');
    });
  });
  const pool = new Http1Pool(url, 1, 5000);
  t.teardown(() => pool.destroy());
  const send = () => pool.send(buildRequest(url, '/', 'text/plain', Buffer.from('x')));
  t.equal(await send(), 200, 'a 5 MB body read to its end');
  t.equal(await send(), 202);
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.equal(await send(), 201, 'the next request goes out on a new socket');
  t.equal(connections(), 2, 'the socket that carried the unasked answer was closed');
});

t.test('requests beyond the socket cap wait for a free socket, in order', async (t) => {
  const s = await serve(t, (_req, res, body) => setTimeout(() => json(res, 200, { n: body.toString() }), 20));
  const pool = new Http1Pool(s.url, 2, 5000);
  t.teardown(() => pool.destroy());
  const outcomes = await Promise.all(
    Array.from({ length: 7 }, (_, i) => pool.send(buildRequest(s.url, '/', 'text/plain', Buffer.from(String(i))))),
  );
  t.same(outcomes, Array(7).fill(200));
  t.equal(s.maxSockets(), 2, 'never more than 2 sockets');
  t.same(
    s.seen.map((r) => r.body.toString()),
    ['0', '1', '2', '3', '4', '5', '6'],
    'sent in the order asked for',
  );
});

t.test('the lean closed loop: connections as asked, bodies round-robin, every answer counted by status', async (t) => {
  let n = 0;
  const s = await serve(t, (_req, res) => {
    n++;
    if (n % 5 === 0) return json(res, 429, { code: 'QUEUE_FULL' });
    setTimeout(() => json(res, 200, {}), 2);
  });
  const bodies = ['a', 'bb', 'ccc'].map((b) => ({ body: Buffer.from(b), contentType: 'image/jpeg' }));
  const target: LoadTarget = { url: s.url.href.replace(/\/$/, ''), path: '/v1/models/m/predict', bodies };
  const r = await closedLoop(target, 3, 0.5, 'lean');
  t.equal(r.mode, 'closed');
  t.equal(r.connections, 3);
  t.equal(s.maxSockets(), 3, 'one socket per connection');
  const ok = r.statuses['200'] ?? 0;
  const refused = r.statuses['429'] ?? 0;
  t.ok(ok > 10, `${ok} answers 200 in 0.5 s`);
  t.ok(refused > 0 && Math.abs(refused - (ok + refused) / 5) <= 3, `${refused} of ${ok + refused} answers 429 (every fifth)`);
  t.same(Object.keys(r.statuses).sort(), ['200', '429'], 'no socket errors: requests cut off by the deadline are not counted');
  t.equal(r.latencyMs.count, ok, 'latency of the 2xx answers only');
  t.equal(r.throughputRps, ok / 0.5);
  t.ok(s.seen.every((x) => x.url === '/v1/models/m/predict' && x.contentType === 'image/jpeg'));
  // Round-robin over one shared counter: the first request of each connection is a different body (the first 3
  // sent), and no body is sent twice as often as another. The server's arrival order across connections is not
  // the order of sending (under CPU load one socket's second request can land before another's first), so the
  // first request is taken per connection, where TCP keeps the order.
  const count = (b: string) => s.seen.filter((x) => x.body.toString() === b).length;
  const firsts = [1, 2, 3].map((c) => s.seen.find((x) => x.connection === c)?.body.toString());
  t.same(new Set(firsts), new Set(['a', 'bb', 'ccc']), `first body per connection: ${firsts.join(', ')}`);
  t.ok(Math.max(count('a'), count('bb'), count('ccc')) - Math.min(count('a'), count('bb'), count('ccc')) <= 3, 'bodies in turn');
});

t.test('the lean closed loop ends at its deadline even while the server holds requests', async (t) => {
  const s = await serve(t, () => {}); // never answers
  const target: LoadTarget = { url: s.url.href.replace(/\/$/, ''), path: '/', bodies: [{ body: Buffer.from('x'), contentType: 'text/plain' }] };
  const t0 = performance.now();
  const r = await closedLoop(target, 2, 0.3, 'lean');
  const took = performance.now() - t0;
  t.ok(took < 5000, `returned after ${took.toFixed(0)} ms for a 0.3 s run`);
  t.equal(r.requests, 0, 'requests still in flight at the deadline are not counted');
  t.equal(r.throughputRps, 0);
});

t.test('the open loop sends at the rate asked, on the lean pool, and counts every request', async (t) => {
  const s = await serve(t, (_req, res) => json(res, 200, {}));
  const target: LoadTarget = { url: s.url.href.replace(/\/$/, ''), path: '/p', bodies: [{ body: Buffer.from('x'), contentType: 'text/plain' }] };
  const r = await openLoop(target, 40, 0.5, 4);
  t.equal(r.requests, 20);
  t.same(r.statuses, { '200': 20 });
  t.equal(s.seen.length, 20);
  t.ok(s.maxSockets() <= 4, `${s.maxSockets()} sockets, at most 4`);
});
