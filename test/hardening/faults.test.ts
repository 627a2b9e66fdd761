/**
 * Faults (issue #5, part 4): broken model files and downloads are caught at startup; a batch whose session throws
 * fails only its own requests; a worker that dies mid-batch fails its requests and is replaced; a client that
 * leaves mid-upload or mid-inference costs no work that could be skipped and is counted as dropped.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { FastifyInstance } from 'fastify';
import { buildTestApp } from '../helpers/app.js';
import { imagePath, modelPath, sharedTestOptions } from '../helpers/shared.js';
import { writeManifest } from '../helpers/hostile.js';
import { ModelLoadError } from '../../src/core/registry.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const PHOTO = 'images/cat_chelsea.png';
const opts = sharedTestOptions(MOBILENET, PHOTO);
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Builds an app on mobilenetv2 with `edit` applied to its manifest entry; returns it and the load outcome. */
async function appWithModel(t: Test, edit: (m: Record<string, unknown>) => Record<string, unknown>, config = {}) {
  const manifest = writeManifest(t.testdir(), ['mobilenetv2'], edit);
  const { app, logs } = await buildTestApp(t, { manifestPath: manifest, load: false, config: { logLevel: 'warn', ...config } });
  const loaded = await app.ocular.models.loadAll().then(
    () => undefined,
    (err: unknown) => err,
  );
  return { app, logs, loaded };
}

async function expectUnavailable(t: Test, app: FastifyInstance, loaded: unknown, reason: RegExp): Promise<string> {
  t.type(loaded, ModelLoadError, 'loading fails with ModelLoadError');
  const model = app.ocular.models.list()[0];
  t.equal(model?.state, 'UNAVAILABLE', 'the model is UNAVAILABLE');
  t.match(model?.reason ?? '', reason, `the reason says why: ${model?.reason?.slice(0, 160) ?? ''}`);
  const ready = await app.inject({ method: 'GET', url: '/readyz' });
  t.equal(ready.statusCode, 503, '/readyz 503');
  const res = await app.inject({
    method: 'POST',
    url: '/v1/models/mobilenetv2/predict',
    payload: readFileSync(imagePath('cat_chelsea.png')),
    headers: { 'content-type': 'image/png' },
  });
  t.equal(res.statusCode, 503, 'predict 503');
  t.equal((res.json() as { code: string }).code, 'MODEL_NOT_READY', 'MODEL_NOT_READY');
  return model?.reason ?? '';
}

t.test('a broken model file is caught at startup', opts, async (t) => {
  const model = readFileSync(modelPath('mobilenetv2-12-int8'));
  const dir = t.testdir();

  t.test('missing', async (t) => {
    const { app, loaded } = await appWithModel(t, (m) => ({ ...m, source: join(dir, 'absent.onnx'), sha256: undefined }));
    // One line naming the entry, the field and the path (issue #20), no stack.
    await expectUnavailable(t, app, loaded, /manifest entry "mobilenetv2" source: .*absent\.onnx does not exist/);
  });

  t.test('truncated (no checksum: onnxruntime refuses it)', async (t) => {
    const path = join(dir, 'truncated.onnx');
    writeFileSync(path, model.subarray(0, Math.floor(model.length / 3)));
    const { app, loaded } = await appWithModel(t, (m) => ({ ...m, source: path, sha256: undefined }));
    await expectUnavailable(t, app, loaded, /./);
  });

  t.test('corrupt (bytes overwritten, no checksum)', async (t) => {
    const path = join(dir, 'corrupt.onnx');
    const bad = Buffer.from(model);
    for (let i = 0; i < 4096; i++) bad[i * 97 + 16] = 0xff;
    writeFileSync(path, bad);
    const { app, loaded } = await appWithModel(t, (m) => ({ ...m, source: path, sha256: undefined }));
    await expectUnavailable(t, app, loaded, /./);
  });

  t.test('with the wrong checksum', async (t) => {
    const { app, loaded } = await appWithModel(t, (m) => ({ ...m, sha256: sha256(Buffer.from('another model')) }));
    await expectUnavailable(t, app, loaded, /has sha256 [0-9a-f]{64}, the manifest expects/);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// URL sources against a local HTTPS server whose CA reaches the registry through configuration
// ---------------------------------------------------------------------------------------------------------------

function makeCert(dir: string): { key: Buffer; cert: Buffer; certPath: string } | string {
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  try {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-keyout', keyPath, '-out', certPath],
      { stdio: 'pipe' },
    );
  } catch {
    return 'openssl is not available: cannot make a test certificate';
  }
  return { key: readFileSync(keyPath), cert: readFileSync(certPath), certPath };
}

t.test('a URL source that misbehaves is caught at startup', opts, async (t) => {
  const dir = t.testdir();
  const tls = makeCert(dir);
  if (typeof tls === 'string') {
    t.comment(`SKIP: ${tls}`);
    return;
  }
  const model = readFileSync(modelPath('mobilenetv2-12-int8'));
  const routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void> = {
    '/model.onnx': (_q, res) => void res.writeHead(200, { 'content-length': model.length }).end(model),
    '/404': (_q, res) => void res.writeHead(404).end('not found'),
    '/500': (_q, res) => void res.writeHead(500).end('boom'),
    '/short.onnx': (_q, res) => {
      res.writeHead(200, { 'content-length': model.length });
      res.write(model.subarray(0, 100_000), () => res.socket?.destroy());
    },
    '/long.onnx': (_q, res) => void res.writeHead(200).end(Buffer.concat([model, Buffer.alloc(1000)])),
    '/stall.onnx': (_q, res) => {
      res.writeHead(200, { 'content-length': model.length });
      res.write(model.subarray(0, 100_000));
    },
  };
  const server: Server = createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
    res.on('error', () => {});
    (routes[req.url ?? ''] ?? routes['/404'])?.(req, res);
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const url = (path: string) => `https://127.0.0.1:${(server.address() as AddressInfo).port}${path}`;
  const config = (cache: string) => ({ sourceCaFile: tls.certPath, downloadStallMs: 500, cacheDir: join(dir, cache) });

  t.test('served correctly, with the CA from configuration: READY', async (t) => {
    const { app, loaded } = await appWithModel(t, (m) => ({ ...m, source: url('/model.onnx') }), config('ok'));
    t.equal(loaded, undefined, 'loads');
    t.equal(app.ocular.models.list()[0]?.state, 'READY');
  });
  t.test('without the CA the server is not trusted', async (t) => {
    const { app, loaded } = await appWithModel(t, (m) => ({ ...m, source: url('/model.onnx') }), { cacheDir: join(dir, 'noca') });
    await expectUnavailable(t, app, loaded, /certificate|self.signed/i);
  });
  for (const [path, reason] of [
    ['/404', /HTTP 404/],
    ['/500', /HTTP 500/],
    ['/short.onnx', /ended after|failed/],
    ['/long.onnx', /sha256/],
    ['/stall.onnx', /stalled|timed out/],
  ] as const) {
    t.test(`${path}: UNAVAILABLE`, async (t) => {
      const { app, loaded } = await appWithModel(t, (m) => ({ ...m, source: url(path) }), config(path.slice(1)));
      await expectUnavailable(t, app, loaded, reason);
    });
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Run-time faults, injected through the pool's test hook
// ---------------------------------------------------------------------------------------------------------------

function post(app: FastifyInstance, body: Buffer) {
  return app.inject({ method: 'POST', url: '/v1/models/mobilenetv2/predict', payload: body, headers: { 'content-type': 'image/png' } });
}

async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function metricValue(app: FastifyInstance, name: string, labels: string): Promise<number> {
  const text = await app.ocular.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

t.test('run-time faults', opts, async (t) => {
  const manifest = writeManifest(t.testdir(), ['mobilenetv2'], (m) => ({ ...m, batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: 64 } }));
  const { app } = await buildTestApp(t, { manifestPath: manifest, config: { logLevel: 'fatal' } });
  const photo = readFileSync(imagePath('cat_chelsea.png'));
  const model = app.ocular.models.list()[0];
  const stage = model?.stages[0];
  if (model === undefined || stage === undefined) throw new Error('no stage');

  /** Holds the worker, lets `n` requests queue (one batch in the pool, the rest in the batcher), then runs `fault`. */
  async function batchesWithFault(n: number, fault: 'throw' | 'exit') {
    const hold = testHooksOf(stage!.pool).hold();
    await hold.entered;
    const answers = Array.from({ length: n }, () => post(app, photo));
    // The first request's batch waits in the pool behind the hold; the others wait in the batcher for it.
    await until('the requests to queue', () => (stage!.batcher?.depth ?? 0) >= n - 1);
    testHooksOf(stage!.pool).injectFault(fault);
    hold.release();
    return Promise.all(answers);
  }

  t.test('a session that throws on a batch fails only that batch', async (t) => {
    const answers = await batchesWithFault(5, 'throw');
    const statuses = answers.map((a) => a.statusCode).sort();
    t.same(statuses, [200, 200, 200, 200, 500], 'the first batch (1 request) fails, the next batch (4) answers');
    const failed = answers.find((a) => a.statusCode === 500);
    t.same(failed?.json(), { code: 'INFERENCE_FAILED', message: 'inference failed' }, 'INFERENCE_FAILED, generic message');
    t.equal(stage.pool.restarts, 0, 'no worker was replaced');
    t.equal((await post(app, photo)).statusCode, 200, 'the next request answers 200');
  });

  t.test('a worker that dies mid-batch fails that batch, is replaced, the model is READY again', async (t) => {
    const answers = await batchesWithFault(5, 'exit');
    const statuses = answers.map((a) => a.statusCode).sort();
    t.same(statuses, [200, 200, 200, 200, 500], 'the batch in the dying worker fails, the next one answers');
    t.equal(stage.pool.restarts, 1, 'the worker was replaced');
    t.equal(model.state, 'READY', 'the model is READY');
    t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200, '/readyz 200');
    t.equal((await post(app, photo)).statusCode, 200, 'the next request answers 200');
  });

  t.test('a client that leaves mid-upload or mid-inference is dropped and counted, no skippable work done', async (t) => {
    await app.listen({ host: '127.0.0.1', port: 0 });
    const port = (app.server.address() as AddressInfo).port;
    const dropped = () => metricValue(app, 'ocular_requests_dropped_total', 'reason="client_closed"');
    const batches = () => metricValue(app, 'ocular_batch_size_count', 'model="mobilenetv2"');

    // Mid-upload: half the promised body, then the connection closes.
    const before = await dropped();
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(`POST /v1/models/mobilenetv2/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: ${photo.length}\r\n\r\n`);
    socket.write(photo.subarray(0, photo.length >> 1));
    await new Promise((r) => setTimeout(r, 100));
    socket.destroy();
    const deadline = Date.now() + 5000;
    while ((await dropped()) < before + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.equal(await dropped(), before + 1, 'mid-upload: counted once in ocular_requests_dropped_total{reason="client_closed"}');

    // Mid-inference: the worker is held, the request waits in the queue, its client leaves.
    const hold = testHooksOf(stage.pool).hold();
    await hold.entered;
    const blocker = post(app, photo); // its batch waits in the pool behind the hold
    // Its batch has left the batcher for the pool (a depth of 0 alone is also true before it was enqueued).
    await until('the blocker to reach the pool', () => stage.batcher?.running === 1 && stage.batcher?.depth === 0);
    const batchesBefore = await batches();
    const droppedBefore = await dropped();
    const client = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => client.once('connect', () => resolve()));
    client.write(`POST /v1/models/mobilenetv2/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: ${photo.length}\r\n\r\n`);
    client.write(photo);
    await until('the request to queue', () => stage.batcher?.depth === 1);
    client.destroy();
    await until('the queued request to leave the queue', () => stage.batcher?.depth === 0);
    hold.release();
    t.equal((await blocker).statusCode, 200, 'the other request answers');
    const end = Date.now() + 5000;
    while ((await dropped()) < droppedBefore + 1 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    t.equal(await dropped(), droppedBefore + 1, 'mid-inference: counted once');
    t.equal(await batches(), batchesBefore + 1, 'only the other request’s batch ran: none for the client that left');
  });
});
