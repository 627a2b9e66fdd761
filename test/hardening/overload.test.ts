/**
 * Overload (issue #5, part 3), on the real server process: capacity is measured in the same test, then three
 * times that is offered for a few seconds. Every answer is the correct 200 or a 503 with Retry-After; the queue
 * never exceeds its bound; nothing is lost; the server is ready afterwards. Slow clients (a body trickled a byte
 * a second, headers never finished) are cut off by the HTTP timeouts without holding anything.
 * Bounds are generous: a noisy 2-core machine must pass. scripts/hardening/overload.ts is the long version.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import t from 'tap';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { send, writeManifest } from '../helpers/hostile.js';
import { closedLoop, openLoop, queueDepth, summarise } from '../helpers/load.js';
import { freePort, startServer, waitReady } from '../helpers/server.js';

const SHARED = ['models/mobilenetv2-12-int8/model.onnx', 'images/cat_chelsea.png'];
const QUEUE = 16;

t.test('three times capacity: correct 200s or fast 503s, a bounded queue, nothing lost', sharedTestOptions(...SHARED), async (t) => {
  const manifest = writeManifest(t.testdir(), ['mobilenetv2'], (m) => ({
    ...m,
    batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: QUEUE, timeoutMs: 2000 },
  }));
  const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_LOG_LEVEL: 'warn', PORT: String(await freePort()) });
  t.teardown(() => server.kill());
  const port = await server.port;
  await waitReady(server, port);
  const target = { port, path: '/v1/models/mobilenetv2/predict', bodies: [readFileSync(imagePath('cat_chelsea.png'))], labels: ['Egyptian cat'] };

  const capacity = await closedLoop(target, 8, 3);
  t.ok(capacity.rps > 0, `capacity: ${capacity.rps.toFixed(1)} requests/s (closed loop, 8 clients)`);
  const rate = Math.max(10, capacity.rps * 3);

  let maxDepth = 0;
  const depths: Promise<void>[] = [];
  const outcomes = await openLoop(target, rate, 6, () => {
    depths.push(queueDepth(port, 'mobilenetv2').then((d) => void (maxDepth = Math.max(maxDepth, d)), () => undefined));
  });
  await Promise.all(depths);
  const s = summarise(outcomes);
  t.comment(`figures: ${JSON.stringify({ capacityRps: Math.round(capacity.rps), offeredRps: Math.round(rate), ...s, maxQueueDepth: maxDepth })}`);

  t.equal(s.lost, 0, 'nothing lost: every request got a correct 200 or a 503');
  t.same([...new Set(outcomes.filter((o) => o.error !== undefined).map((o) => o.error))], [], 'no transport errors, no wrong answers');
  t.ok(s.answered200 > 0, `${s.answered200} answered 200`);
  t.ok(s.refused503 > 0, `${s.refused503} refused 503 (${JSON.stringify(s.refusedByCode)})`);
  t.ok(
    outcomes.filter((o) => o.status === 503).every((o) => o.retryAfter === '1' && (o.code === 'QUEUE_FULL' || o.code === 'QUEUE_TIMEOUT')),
    'every 503 is QUEUE_FULL or QUEUE_TIMEOUT with Retry-After',
  );
  t.ok(maxDepth <= QUEUE, `queue depth never above its bound (max seen ${maxDepth} <= ${QUEUE})`);

  const ready = await send(port, { path: '/readyz' });
  t.equal(ready.status, 200, 'ready afterwards');
  t.equal(await queueDepth(port, 'mobilenetv2'), 0, 'queue empty afterwards');
  t.equal(server.child.exitCode, null, 'the process is still running');
});

t.test('slow clients are cut off by the timeouts without holding workers', sharedTestOptions(...SHARED), async (t) => {
  const manifest = writeManifest(t.testdir(), ['mobilenetv2']);
  const server = startServer({
    OCULAR_MANIFEST: manifest,
    OCULAR_LOG_LEVEL: 'warn', PORT: String(await freePort()),
    OCULAR_HTTP_REQUEST_TIMEOUT_MS: '3000',
    OCULAR_HTTP_HEADERS_TIMEOUT_MS: '1500',
  });
  t.teardown(() => server.kill());
  const port = await server.port;
  await waitReady(server, port);
  const photo = readFileSync(imagePath('cat_chelsea.png'));

  const slow = (kind: 'trickle' | 'headers'): Promise<{ closedAfterMs: number; answer: string }> =>
    new Promise((resolve) => {
      const started = performance.now();
      const socket: Socket = connect(port, '127.0.0.1');
      let answer = '';
      let timer: NodeJS.Timeout | undefined;
      socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
      socket.on('error', () => {});
      socket.on('close', () => {
        clearInterval(timer);
        resolve({ closedAfterMs: performance.now() - started, answer: answer.split('\r\n')[0] ?? '' });
      });
      socket.on('connect', () => {
        if (kind === 'headers') {
          socket.write('POST /v1/models/mobilenetv2/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n');
          timer = setInterval(() => socket.write('X-Slow: 1\r\n'), 1000);
        } else {
          socket.write(`POST /v1/models/mobilenetv2/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: ${photo.length}\r\n\r\n`);
          let i = 0;
          timer = setInterval(() => socket.write(photo.subarray(i, ++i)), 1000);
        }
      });
    });

  const clients = [...Array.from({ length: 10 }, () => slow('trickle')), ...Array.from({ length: 10 }, () => slow('headers'))];
  // While they crawl, the server answers others at once: nothing is held by them.
  await new Promise((r) => setTimeout(r, 500));
  const normal = await send(port, { path: '/v1/models/mobilenetv2/predict', body: photo, headers: { 'content-type': 'image/png' } });
  t.equal(normal.status, 200, `a normal request answers 200 in ${normal.ms.toFixed(0)} ms while 20 slow clients are connected`);
  const results = await Promise.all(clients);
  const trickle = results.slice(0, 10);
  const headers = results.slice(10);
  t.ok(trickle.every((r) => r.closedAfterMs < 15_000), `trickled bodies cut off after ${Math.round(Math.max(...trickle.map((r) => r.closedAfterMs)))} ms at most (request timeout 3000 ms)`);
  t.ok(headers.every((r) => r.closedAfterMs < 15_000), `unfinished headers cut off after ${Math.round(Math.max(...headers.map((r) => r.closedAfterMs)))} ms at most (headers timeout 1500 ms)`);
  t.comment(`answers to slow clients: ${[...new Set(results.map((r) => r.answer || '(closed with no answer)'))].join(', ')}`);
  t.equal((await send(port, { path: '/readyz' })).status, 200, 'ready afterwards');
  t.equal(await queueDepth(port, 'mobilenetv2'), 0, 'nothing queued');
});
