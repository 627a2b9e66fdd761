/**
 * Raw image bodies in pooled buffers (src/plugins/raw-body.ts, src/core/body-pool.ts), through a real socket: a
 * buffer is reused only once its request is done with it, so answers stay right under concurrency, with clients
 * that leave mid-upload; refused bodies go back to the pool; chunked bodies and the body limit behave as before.
 */
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { send } from '../helpers/hostile.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';

const PHOTOS = ['cat_chelsea.png', 'soccer_player.jpg', 'robin.jpg', 'fruits.jpg', 'flower_dahlia.jpg'];
const SHARED = ['models/mobilenetv2-12-int8/model.onnx', ...PHOTOS.map((p) => `images/${p}`)];
const PATH = '/v1/models/mobilenetv2/predict';

async function listen(app: Awaited<ReturnType<typeof buildTestApp>>['app']): Promise<number> {
  await app.listen({ port: 0, host: '127.0.0.1' });
  return (app.server.address() as AddressInfo).port;
}

const topLabel = (body: string): string | undefined => (JSON.parse(body) as { predictions?: { label: string }[] }).predictions?.[0]?.label;

/** Sends half of `body` under its full Content-Length, then drops the connection. */
function abortMidUpload(port: number, body: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: PATH, agent: false, headers: { 'content-type': 'application/octet-stream', 'content-length': String(body.length) } });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.write(body.subarray(0, body.length >> 1), () => setTimeout(() => req.destroy(), 5));
  });
}

t.test('pooled bodies under concurrency and mid-upload aborts: every answer is the one its photo gets alone', sharedTestOptions(...SHARED), async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([sharedModel('mobilenetv2')]) });
  const port = await listen(app);
  const bodies = PHOTOS.map((p) => readFileSync(imagePath(p)));
  const post = (body: Buffer) => send(port, { path: PATH, body, headers: { 'content-type': 'application/octet-stream' }, timeoutMs: 60_000 });
  const alone: (string | undefined)[] = [];
  for (const body of bodies) {
    const res = await post(body);
    t.equal(res.status, 200);
    alone.push(topLabel(res.body));
  }
  t.equal(new Set(alone).size, PHOTOS.length, `five photos, five different top labels: ${alone.join(', ')}`);
  for (let round = 0; round < 3; round++) {
    const order = Array.from({ length: 30 }, (_, i) => (i * 7 + round) % bodies.length);
    const answers = order.map((i) => post(bodies[i] as Buffer));
    const aborted = order.slice(0, 10).map((i) => abortMidUpload(port, bodies[i] as Buffer));
    const results = await Promise.all(answers);
    await Promise.all(aborted);
    const wrong = results.flatMap((res, k) => {
      const i = order[k] as number;
      return res.status === 200 && topLabel(res.body) === alone[i] ? [] : [`${PHOTOS[i]}: ${res.status} ${topLabel(res.body) ?? res.body.slice(0, 80)}`];
    });
    t.same(wrong, [], `round ${round + 1}: 30 concurrent answers, each the photo's own, beside 10 aborted uploads`);
  }
  t.ok(app.ocular.bodyPool.freeBytes > 0, 'bodies went back to the pool');
});

t.test('a body refused before the pipeline goes back to the pool; a chunked body is read whole and not pooled', sharedTestOptions(...SHARED), async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([sharedModel('mobilenetv2')]) });
  const port = await listen(app);
  const pool = app.ocular.bodyPool;
  const photo = readFileSync(imagePath('soccer_player.jpg'));
  t.equal(pool.freeBytes, 0, 'a fresh pool holds nothing');
  // An unknown model is refused from the URL, before its body is read: no buffer is taken at all.
  const unknown = await send(port, { path: '/v1/models/nope/predict', body: photo, headers: { 'content-type': 'application/octet-stream' } });
  t.equal(unknown.status, 404);
  t.equal(pool.freeBytes, 0, 'the 404 took no buffer');
  // A query refused by validation is refused after its body is read, before the pipeline.
  const invalid = await send(port, { path: `${PATH}?top_k=${'9'.repeat(17)}`, body: photo, headers: { 'content-type': 'application/octet-stream' } });
  t.equal(invalid.status, 400);
  t.equal(pool.freeBytes, pool.capacityFor(photo.length), "the 400's body is back in the pool");

  const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: PATH, agent: false, headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    for (let at = 0; at < photo.length; at += 10_000) req.write(photo.subarray(at, at + 10_000));
    req.end();
  });
  t.equal(chunked.status, 200, 'a chunked body is answered');
  t.equal(topLabel(chunked.body), topLabel((await send(port, { path: PATH, body: photo, headers: { 'content-type': 'application/octet-stream' } })).body), 'with the same answer');
});

t.test('the body limit holds for declared and chunked bodies (413 BODY_TOO_LARGE)', sharedTestOptions(...SHARED), async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([sharedModel('mobilenetv2')]), config: { bodyLimitBytes: 50_000 } });
  const port = await listen(app);
  const photo = readFileSync(imagePath('soccer_player.jpg'));
  t.ok(photo.length > 50_000);
  const declared = await send(port, { path: PATH, body: photo, headers: { 'content-type': 'application/octet-stream' } });
  t.equal(declared.status, 413);
  t.equal((JSON.parse(declared.body) as { code: string }).code, 'BODY_TOO_LARGE');
  const chunked = await new Promise<number>((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: PATH, agent: false, headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(-1));
    for (let at = 0; at < photo.length; at += 10_000) req.write(photo.subarray(at, at + 10_000));
    req.end();
  });
  t.ok(chunked === 413 || chunked === -1, `a chunked body past the limit is refused (${chunked})`);
});
