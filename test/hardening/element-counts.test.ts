/**
 * Element counts from the header (issue 18, item 1): a v2 request's BYTES element count and batch dimension are
 * checked against the model's maxBatchSize, and its tensor shapes against the model's, from the JSON header,
 * before any element is made; each image counts against the admission bound like a /v1 file. The hostile
 * requests are the (a binary BYTES input of hundreds of thousands of empty elements, a batch dimension in
 * the hundreds of thousands) at CI size: each is answered 400 at once, the event loop of this process (which
 * hosts the server) is never blocked 100 ms, and /healthz and a normal request are answered meanwhile.
 * scripts/hardening/element-counts.ts replays the full-size case (a million elements).
 */
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import t, { type Test } from 'tap';
import { buildTestApp, sharedModel } from '../helpers/app.js';
import { send, type HttpAnswer } from '../helpers/hostile.js';
import { describeBlock, MAX_LOOP_BLOCK_MS, measureLoopBlock } from '../helpers/loop-block.js';
import { sharedTestOptions } from '../helpers/shared.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import { MAX_MESSAGE_CHARS, V2ErrorSchema } from '../../src/errors.js';
import { binaryRequest, bytesElements, writeTinyManifest } from '../v2/helpers.js';

const SHARED = ['models/mobilenetv2-12-int8/model.onnx'];
/** Elements of the hostile inputs: the million, scaled to CI. */
const ELEMENTS = 250_000;
/** mobilenetv2's batching in this test: admission bound = maxQueueSize + maxBatchSize x 1 instance = 7 images. */
const BATCHING = { maxBatchSize: 4, maxQueueDelayMs: 0, maxQueueSize: 3, tune: 'off' };

interface Hostile {
  path: string;
  body: Buffer;
  headers: Record<string, string>;
}

const JSON_HEADERS = { 'content-type': 'application/json' };
const addRequest = { inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] }] };

/** Sends `hostile` with /healthz and a normal request beside it; checks the refusal and the event loop. */
async function refusedAtOnce(t: Test, port: number, hostile: Hostile, expect: { status: number; code: string; error: RegExp }): Promise<void> {
  const normal = Buffer.from(JSON.stringify(addRequest));
  const { value, ...block } = await measureLoopBlock(() =>
    Promise.all([
      send(port, { path: hostile.path, body: hostile.body, headers: hostile.headers }),
      send(port, { path: '/healthz' }),
      send(port, { path: '/v2/models/add/infer', body: normal, headers: JSON_HEADERS }),
    ]),
  );
  const [refused, health, answered] = value as [HttpAnswer, HttpAnswer, HttpAnswer];
  t.equal(refused.status, expect.status, `status ${expect.status}`);
  const err = V2ErrorSchema.parse(JSON.parse(refused.body));
  t.equal(err.code, expect.code, `code ${expect.code}`);
  t.match(err.error, expect.error, `the error says why: ${err.error}`);
  t.ok(refused.body.length <= MAX_MESSAGE_CHARS + 64, `a bounded body (${refused.body.length} bytes)`);
  t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `event loop blocked at most ${describeBlock(block)}`);
  t.equal(health.status, 200, '/healthz answered meanwhile');
  t.equal(answered.status, 200, 'a normal inference answered meanwhile');
}

t.test('element counts are checked from the header, before any element is made', async (t) => {
  const shared = sharedTestOptions(...SHARED).skip === undefined;
  const manifestPath = writeTinyManifest(t.testdir(), (models) => {
    if (shared) models.push({ ...sharedModel('mobilenetv2'), batching: BATCHING });
  });
  const { app, logs } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0, logLevel: 'warn' } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as AddressInfo).port;
  const empties = bytesElements(Array.from({ length: ELEMENTS }, () => Buffer.alloc(0)));
  // Warm: the first request down each path compiles it; the bound is on what a hostile request costs.
  const small = binaryRequest([{ name: 'A', datatype: 'FP32', shape: [1, 4], bytes: Buffer.alloc(16) }]);
  for (let i = 0; i < 3; i++) {
    await send(port, { path: '/healthz' });
    await send(port, { path: '/v2/models/add/infer', body: Buffer.from(JSON.stringify(addRequest)), headers: JSON_HEADERS });
    await send(port, { path: '/v2/models/add/infer', body: small.body, headers: small.headers });
  }

  t.test('a binary BYTES input of 250,000 empty images: 400 naming maxBatchSize', sharedTestOptions(...SHARED), async (t) => {
    const { body, headers } = binaryRequest([{ name: 'image', datatype: 'BYTES', shape: [ELEMENTS], bytes: empties }]);
    await refusedAtOnce(t, port, { path: '/v2/models/mobilenetv2/infer', body, headers }, {
      status: 400,
      code: 'INVALID_REQUEST',
      error: new RegExp(`holds ${ELEMENTS} images .*at most 4 \\(its maxBatchSize\\)`),
    });
  });

  t.test('a BYTES shape of one with 250,000 elements in its chunk: 400 after the first', async (t) => {
    const { body, headers } = binaryRequest([{ name: 'image', datatype: 'BYTES', shape: [1], bytes: empties }]);
    // A tensor model refuses BYTES from the header alone (it takes no images).
    const model = shared ? 'mobilenetv2' : 'add';
    await refusedAtOnce(t, port, { path: `/v2/models/${model}/infer`, body, headers }, {
      status: 400,
      code: 'INVALID_REQUEST',
      error: shared ? /more elements than its shape holds \(1\)/ : /takes raw tensors, not BYTES/,
    });
  });

  t.test('JSON BYTES data of 250,000 strings, parsed in the worker: 400 from the header', async (t) => {
    const body = Buffer.from(JSON.stringify({ inputs: [{ name: 'image', shape: [ELEMENTS], datatype: 'BYTES', data: Array.from({ length: ELEMENTS }, () => '') }] }));
    const before = app.inferParser.offThread;
    // An image model counts the images against its maxBatchSize; a tensor model takes no BYTES at all.
    await refusedAtOnce(t, port, { path: `/v2/models/${shared ? 'mobilenetv2' : 'add'}/infer`, body, headers: JSON_HEADERS }, {
      status: 400,
      code: 'INVALID_REQUEST',
      error: shared ? new RegExp(`holds ${ELEMENTS} images .*at most 4 \\(its maxBatchSize\\)`) : /takes raw tensors, not BYTES/,
    });
    t.equal(app.inferParser.offThread, before + 1, 'the body was parsed off the main thread, with the model\'s bounds');
  });

  t.test('a batch dimension of 250,000 rows: 400 naming maxBatchSize', async (t) => {
    const rows = new Float32Array(ELEMENTS * 4);
    const { body, headers } = binaryRequest([
      { name: 'A', datatype: 'FP32', shape: [ELEMENTS, 4], bytes: Buffer.from(rows.buffer) },
      { name: 'B', datatype: 'FP32', shape: [ELEMENTS, 4], bytes: Buffer.from(rows.buffer) },
    ]);
    await refusedAtOnce(t, port, { path: '/v2/models/add/infer', body, headers }, {
      status: 400,
      code: 'INVALID_REQUEST',
      error: new RegExp(`batch size ${ELEMENTS} \\(dim 0\\) is more than model "add" takes \\(its maxBatchSize, 8\\)`),
    });
  });

  t.test('a shape the model does not take, a million elements: 400 before they are read', async (t) => {
    const wide = new Float32Array(1_000_000);
    const { body, headers } = binaryRequest([
      { name: 'A', datatype: 'FP32', shape: [1, wide.length], bytes: Buffer.from(wide.buffer) },
      { name: 'B', datatype: 'FP32', shape: [1, wide.length], bytes: Buffer.from(wide.buffer) },
    ]);
    await refusedAtOnce(t, port, { path: '/v2/models/add/infer', body, headers }, {
      status: 400,
      code: 'INVALID_REQUEST',
      error: /shape \[1,1000000\] does not fit the model's \[-1,4\]/,
    });
  });

  t.test('an input the model does not have: 400 from the header', async (t) => {
    const body = Buffer.from(JSON.stringify({ inputs: [{ name: 'Z', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }] }));
    await refusedAtOnce(t, port, { path: '/v2/models/add/infer', body, headers: JSON_HEADERS }, {
      status: 400,
      code: 'INVALID_REQUEST',
      error: /model "add" has no input "Z" \(inputs: A, B\)/,
    });
  });

  t.test('each image counts against the admission bound: v2 BYTES elements and /v1 multipart files', sharedTestOptions(...SHARED), async (t) => {
    const stage = app.ocular.models.get('mobilenetv2')?.stages[0];
    if (stage === undefined) throw new Error('mobilenetv2 has no stage');
    const bound = stage.batching.maxQueueSize + stage.batchLimit * stage.pool.instances;
    t.equal(bound, 7, 'the bound: 3 queued + a batch of 4 on 1 instance');
    const tiny = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#808080' } }).png().toBuffer();
    const fourImages = binaryRequest([{ name: 'image', datatype: 'BYTES', shape: [4], bytes: bytesElements([tiny, tiny, tiny, tiny]) }]);
    const infer = () => send(port, { path: '/v2/models/mobilenetv2/infer', body: fourImages.body, headers: fourImages.headers });

    // The worker is held, so the first request's four images stay in progress.
    const hold = testHooksOf(stage.pool).hold();
    await hold.entered;
    const first = infer();
    const images = stage.batcher;
    if (images === undefined) throw new Error('an image model has an image batcher');
    for (let i = 0; i < 500 && images.running + images.depth === 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.ok(images.running + images.depth > 0, 'the first request reached the queue');


    // Four more would make 8 images past the bound of 7: refused before any is decoded, though only 2 requests
    // (admitted as one, then 3 more refused: the log says so).
    const second = await infer();
    t.equal(second.status, 503, 'a second request of four images is refused');
    t.equal(second.headers['retry-after'], '1', 'with Retry-After');
    t.equal(V2ErrorSchema.parse(JSON.parse(second.body)).code, 'QUEUE_FULL');
    // A 503 answers the catalog's message; the log says who refused it.
    const refusals = () => logs.lines.filter((l) => /has 5 images in progress; 3 more would pass its limit of 7/.test(String((l['err'] as { message?: unknown } | undefined)?.message)));
    t.equal(refusals().length, 1, 'refused by admission, counting images, not by the queue');

    const form = new FormData();
    for (let i = 0; i < 4; i++) form.append('file', new Blob([tiny], { type: 'image/png' }), `tiny${i}.png`);
    const multipart = new Request('http://localhost/', { method: 'POST', body: form });
    const files = await send(port, {
      path: '/v1/models/mobilenetv2/predict',
      body: Buffer.from(await multipart.arrayBuffer()),
      headers: { 'content-type': multipart.headers.get('content-type') ?? '' },
    });
    t.equal(files.status, 503, 'a /v1 multipart request of four files is refused the same way');
    t.match(JSON.parse(files.body), { code: 'QUEUE_FULL' });
    t.equal(refusals().length, 2, 'refused by admission too, before any file is decoded');

    hold.release();
    await hold.done;
    t.equal((await first).status, 200, 'the admitted request answers');
    t.equal((await infer()).status, 200, 'its images are given back: four more are admitted');
  });
});
