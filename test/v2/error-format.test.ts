/**
 * One error path, two wire formats: every error under /v2 answers the Open Inference Protocol's body
 * `{ "error": message, "code": CODE }` (what Triton's clients decode), every other path Ocular's `{ code, message }`,
 * whoever answers: the auth hook, Fastify's routing, body validation, a forced drain, or Node itself on a
 * connection it could not parse (a raw answer on the socket). All with Content-Type application/json and the
 * security headers.
 */
import { connect } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import t, { type Test } from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { ErrorBodySchema, V2ErrorSchema } from '../../src/errors.js';
import { errorFormatOf } from '../../src/plugins/errors.js';
import { writeTinyManifest } from './helpers.js';

const KEY = 'k-0123456789abcdef0123456789abcdef';
const ADD_BODY = JSON.stringify({
  inputs: [
    { name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] },
    { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] },
  ],
});

interface Answer {
  statusCode: number;
  headers: Record<string, string | string[] | number | undefined>;
  body: string;
}


function hasSecurityHeaders(t: Test, res: Answer, what: string): void {
  t.equal(res.headers['x-content-type-options'], 'nosniff', `${what}: X-Content-Type-Options`);
  t.equal(res.headers['x-frame-options'], 'DENY', `${what}: X-Frame-Options`);
  t.equal(res.headers['referrer-policy'], 'no-referrer', `${what}: Referrer-Policy`);
}

/** The protocol's error body, exactly its two keys, with `code`; JSON, secured. */
function isOipError(t: Test, res: Answer, status: number, code: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: ${status} (${res.body.slice(0, 200)})`);
  t.match(String(res.headers['content-type']), /^application\/json\b/, `${what}: JSON`);
  const body = JSON.parse(res.body) as Record<string, unknown>;
  t.same(Object.keys(body).sort(), ['code', 'error'], `${what}: the protocol's keys, error and code`);
  t.equal(V2ErrorSchema.parse(body).code, code, `${what}: ${code}`);
  t.ok((body['error'] as string).length > 0, `${what}: error says why`);
  hasSecurityHeaders(t, res, what);
}

/** Ocular's error body, exactly `{ code, message }`; JSON, secured. */
function isOcularError(t: Test, res: Answer, status: number, code: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: ${status} (${res.body.slice(0, 200)})`);
  t.match(String(res.headers['content-type']), /^application\/json\b/, `${what}: JSON`);
  const body = JSON.parse(res.body) as Record<string, unknown>;
  t.same(Object.keys(body).sort(), ['code', 'message'], `${what}: Ocular's keys, code and message`);
  t.equal(ErrorBodySchema.parse(body).code, code, `${what}: ${code}`);
  hasSecurityHeaders(t, res, what);
}

/** Writes `request` on a new connection and reads the answer until the server closes it. */
function rawExchange(port: number, request: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => {}); // the server may reset after answering; what it wrote is what counts
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return reject(new Error(`no complete answer: ${JSON.stringify(text.slice(0, 200))}`));
      const [statusLine = '', ...lines] = text.slice(0, end).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const at = line.indexOf(':');
        headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
      }
      resolve({ statusCode: Number(statusLine.split(' ')[1]), headers, body: text.slice(end + 4) });
    });
    socket.write(request);
  });
}

t.test('the format follows the path: /v2 and below answer the protocol, everything else Ocular', async (t) => {
  for (const url of ['/v2', '/v2/', '/v2?x=1', '/v2/models/a/infer', '/v2/no/such/route']) t.equal(errorFormatOf(url), 'oip', url);
  for (const url of ['/', '/v1/models', '/v2x', '/v20/models', '/healthz', '/v1/v2/models', '']) t.equal(errorFormatOf(url), 'ocular', url);
});

t.test('with API keys, a request without one is 401 in the format of its path', async (t) => {
  const dir = t.testdir();
  const keys = join(dir, 'keys.txt');
  writeFileSync(keys, `${KEY}\n`);
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0, authKeysFile: keys } });
  const infer = { method: 'POST' as const, url: '/v2/models/add/infer', headers: { 'content-type': 'application/json' }, payload: ADD_BODY };

  for (const [method, url] of [['POST', '/v2/models/add/infer'], ['GET', '/v2'], ['GET', '/v2/models/add'], ['GET', '/v2/no/such/route']] as const) {
    const res = await app.inject({ ...infer, method, url });
    isOipError(t, res, 401, 'UNAUTHORIZED', `${method} ${url}`);
    t.equal(res.headers['www-authenticate'], 'Bearer realm="ocular"', `${url}: WWW-Authenticate`);
  }
  for (const url of ['/v1/models', '/v2x/models']) isOcularError(t, await app.inject({ method: 'GET', url }), 401, 'UNAUTHORIZED', url);

  const ok = await app.inject({ ...infer, headers: { ...infer.headers, authorization: `Bearer ${KEY}` } });
  t.equal(ok.statusCode, 200, 'with the key, the same request answers');
});

t.test('without auth', async (t) => {
  const dir = t.testdir();
  const { app, logs } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0 } });
  /** Requests of model add the lifecycle has finished with (answered, refused or dropped). */
  const finished = async () =>
    (await app.ocular.metrics.requests.get()).values.filter((v) => v.labels['model'] === 'add').reduce((n, v) => n + v.value, 0);

  t.test("Fastify's routing errors (a name over maxParamLength, a bad %-escape) are 400 in the path's format", async (t) => {
    const long = 'a'.repeat(300);
    isOipError(t, await app.inject({ method: 'POST', url: `/v2/models/${long}/infer`, payload: ADD_BODY }), 400, 'INVALID_PARAMETER', 'v2 long name');
    isOipError(t, await app.inject({ method: 'GET', url: '/v2/models/%E0%A4%A/ready' }), 400, 'INVALID_REQUEST', 'v2 bad escape');
    isOcularError(t, await app.inject({ method: 'POST', url: `/v1/models/${long}/predict`, payload: 'x' }), 400, 'INVALID_PARAMETER', 'v1 long name');
    isOcularError(t, await app.inject({ method: 'GET', url: '/v1/models/%E0%A4%A' }), 400, 'INVALID_REQUEST', 'v1 bad escape');
  });

  t.test('a body the protocol cannot parse and an unknown route are answered in its format', async (t) => {
    const bad = await app.inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json' }, payload: '{not json' });
    isOipError(t, bad, 400, 'INVALID_REQUEST', 'malformed JSON');
    isOipError(t, await app.inject({ method: 'GET', url: '/v2/nothing/here' }), 404, 'NOT_FOUND', 'unknown v2 route');
    isOcularError(t, await app.inject({ method: 'GET', url: '/v1/nothing/here' }), 404, 'NOT_FOUND', 'unknown v1 route');
  });

  t.test('a forced drain answers a /v2 request still queued 503 DRAINING in the protocol format', async (t) => {
    const stage = app.ocular.models.get('add')?.stages[0];
    if (stage === undefined) throw new Error('model add has no stage');
    // The one worker is blocked: the request waits for it, unanswered.
    const hold = testHooksOf(stage.pool).hold();
    await hold.entered;
    const before = await finished();
    let settled = false;
    const pending = app
      .inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json' }, payload: ADD_BODY })
      .finally(() => {
        settled = true;
      });
    for (let i = 0; i < 200 && app.inFlight.open === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    await new Promise((resolve) => setTimeout(resolve, 100));
    t.notOk(settled, 'the request is still waiting for the worker');
    await app.inFlight.answerAll(1000);
    const res = await pending;
    isOipError(t, res, 503, 'DRAINING', 'forced drain');
    t.equal(res.headers['retry-after'], '1', 'Retry-After');
    t.equal(res.headers['connection'], 'close', 'Connection: close');
    hold.release();
    await hold.done;
    // The handler finishes its work later; it must not write a second answer.
    for (let i = 0; i < 300 && (await finished()) === before; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    t.equal(await finished(), before + 1, 'the lifecycle finished the request');
    t.same(logs.lines.filter((l) => /already sent/i.test(String(l['msg']))), [], 'no second answer was attempted');
  });
});

t.test("Node's own answers to a connection it cannot parse follow the path's format, with the security headers", async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0 } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  const big = `x-big: ${'a'.repeat(20_000)}\r\n`;

  const v2Large = await rawExchange(address.port, `GET /v2/models/add HTTP/1.1\r\nhost: localhost\r\n${big}\r\n`);
  isOipError(t, v2Large, 431, 'HEADERS_TOO_LARGE', 'v2 headers too large');
  t.equal(v2Large.headers['connection'], 'close', 'the connection is closed');
  t.equal(Number(v2Large.headers['content-length']), Buffer.byteLength(v2Large.body), 'Content-Length is the body');
  isOcularError(t, await rawExchange(address.port, `GET /v1/models HTTP/1.1\r\nhost: localhost\r\n${big}\r\n`), 431, 'HEADERS_TOO_LARGE', 'v1 headers too large');

  const malformed = (path: string) => `GET ${path} HTTP/1.1\r\nhost: localhost\r\nthis is no header\r\n\r\n`;
  isOipError(t, await rawExchange(address.port, malformed('/v2/health/live')), 400, 'INVALID_REQUEST', 'v2 malformed header');
  isOcularError(t, await rawExchange(address.port, malformed('/healthz')), 400, 'INVALID_REQUEST', 'malformed header elsewhere');
});

t.test('a request whose body does not arrive within the request timeout is 408 in its path format', async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, {
    manifestPath: writeTinyManifest(dir),
    config: { device: 'cpu', manifestWatchMs: 0, httpRequestTimeoutMs: 600, httpHeadersTimeoutMs: 600 },
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  // Headers whole, the body cut short: Node has dispatched the request, whose route waits for the rest.
  const partial = (path: string) => `POST ${path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: 100\r\n\r\n{"in`;
  const [v2, v1] = await Promise.all([
    rawExchange(address.port, partial('/v2/models/add/infer')),
    rawExchange(address.port, partial('/v1/models/add/predict')),
  ]);
  isOipError(t, v2, 408, 'REQUEST_TIMEOUT', 'v2 slow body');
  isOcularError(t, v1, 408, 'REQUEST_TIMEOUT', 'v1 slow body');
});
