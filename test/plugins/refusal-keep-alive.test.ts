/**
 * A request refused from its headers, before its body was read, keeps its connection when the rest of the body is
 * a photo's worth (KEEP_ALIVE_DISCARD_BYTES): Node reads and discards it, and a keep-alive client's next request
 * goes on the same socket. A longer body, or one of unknown length, closes the connection instead
 * (plugins/errors.ts, closesConnection).
 */
import { Agent, request } from 'node:http';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { writeTinyManifest } from '../v2/helpers.js';
import { KEEP_ALIVE_DISCARD_BYTES } from '../../src/plugins/errors.js';

interface Sent {
  status: number;
  connection: string | undefined;
  reusedSocket: boolean;
  body: string;
}

/** One request on `agent`: its status, its Connection header, and whether it went on a socket used before. */
function send(port: number, agent: Agent, opts: { method: string; path: string; body?: Buffer; chunked?: boolean }): Promise<Sent> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { 'content-type': 'application/json' };
    if (opts.body !== undefined) headers[opts.chunked === true ? 'transfer-encoding' : 'content-length'] = opts.chunked === true ? 'chunked' : opts.body.length;
    const req = request({ host: '127.0.0.1', port, method: opts.method, path: opts.path, agent, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, connection: res.headers['connection'], reusedSocket: req.reusedSocket, body: Buffer.concat(chunks).toString('utf8') }),
      );
    });
    req.on('error', reject);
    // The whole body is written, as a client does; the server answers from the headers, before reading it.
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

t.test('a refusal before a small body is read keeps the connection; a large or chunked one closes it', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0 } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  const port = address.port;

  for (const [name, body, chunked, keeps] of [
    ['200 kB, declared', Buffer.alloc(200 * 1024, 0x20), false, true],
    ['exactly the discard bound, declared', Buffer.alloc(KEEP_ALIVE_DISCARD_BYTES, 0x20), false, true],
    ['one byte past the discard bound, declared', Buffer.alloc(KEEP_ALIVE_DISCARD_BYTES + 1, 0x20), false, false],
    ['200 kB, chunked', Buffer.alloc(200 * 1024, 0x20), true, false],
  ] as const) {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.teardown(() => agent.destroy());
    // A model that does not exist: 404 MODEL_NOT_FOUND, decided from the path before the body is read.
    const refused = await send(port, agent, { method: 'POST', path: '/v2/models/nope/infer', body, chunked });
    t.equal(refused.status, 404, `${name}: refused 404`);
    t.match(JSON.parse(refused.body), { code: 'MODEL_NOT_FOUND' }, `${name}: MODEL_NOT_FOUND`);
    t.equal(refused.connection === 'close', !keeps, `${name}: Connection: ${refused.connection ?? '(none: keep-alive)'}`);
    const next = await send(port, agent, { method: 'GET', path: '/healthz' });
    t.equal(next.status, 200, `${name}: the next request is answered`);
    t.equal(next.reusedSocket, keeps, keeps ? `${name}: on the same connection` : `${name}: on a new connection`);
  }
});
