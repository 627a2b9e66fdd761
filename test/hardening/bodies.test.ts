/**
 * Decide before reading (issue 18, item 2): a request's model, key and admission are decided from its URL and
 * headers before its body is read; a refusal is answered at once and the connection closed while the client is
 * still sending. Request bytes in flight are capped across requests, and the v2 JSON parse pool is bounded in
 * queue and time. Sizes are scaled down (limits lowered in the test's server); the server listens on port 0 in
 * this process, so the event-loop delay measured here is the server's.
 */
import { writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { FastifyInstance } from 'fastify';
import { describeBlock, loopBlockProbe, MAX_LOOP_BLOCK_MS } from '../helpers/loop-block.js';
import { buildTestApp } from '../helpers/app.js';
import { FLOAT, encodeModel, sha256, writeTinyManifest } from '../v2/helpers.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import { ErrorBodySchema, V2ErrorSchema } from '../../src/errors.js';
import { InferenceResponseSchema } from '../../src/protocols/oip/schemas.js';
import { InferParser, RECYCLE_ABOVE_BYTES } from '../../src/protocols/oip/parser.js';
import type { FeedData } from '../../src/core/runner/feeds.js';

// Several cases move tens of MiB through a real listener: minutes on a loaded 2-core runner.
t.setTimeout(300_000);

const MiB = 1024 * 1024;
const KEY = 'a-test-key-of-sufficient-length';

interface Upload {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Body bytes the client managed to write before the connection closed. */
  sent: number;
}

/**
 * A client that sends the head of a request declaring `declared` body bytes (or chunked), then keeps sending
 * until the server closes the connection, the body is complete, or `pauseAfter` bytes (then it holds the
 * connection open until `release` is called). Resolves once the connection is closed.
 */
function upload(
  port: number,
  path: string,
  opts: { declared?: number; chunked?: boolean; headers?: Record<string, string>; pauseAfter?: number },
): { done: Promise<Upload>; answered: Promise<void>; release: () => void; sentSoFar: () => number } {
  const socket = connect(port, '127.0.0.1');
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  let sent = 0;
  let closed = false;
  let paused = false;
  let raw = Buffer.alloc(0);
  let onAnswered: () => void = () => {};
  const answered = new Promise<void>((resolve) => (onAnswered = resolve));
  const total = opts.declared ?? Infinity;
  const head = [
    `POST ${path} HTTP/1.1`,
    'host: 127.0.0.1',
    'content-type: application/octet-stream',
    opts.chunked === true ? 'transfer-encoding: chunked' : `content-length: ${opts.declared ?? 0}`,
    ...Object.entries(opts.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
    '',
    '',
  ].join('\r\n');
  const pump = (): void => {
    while (!closed && !paused && sent < total) {
      if (opts.pauseAfter !== undefined && sent >= opts.pauseAfter) {
        paused = true;
        return;
      }
      const n = Math.min(chunk.length, total - sent);
      const piece = opts.chunked === true ? Buffer.concat([Buffer.from(`${n.toString(16)}\r\n`), chunk.subarray(0, n), Buffer.from('\r\n')]) : chunk.subarray(0, n);
      sent += n;
      if (!socket.write(piece)) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  socket.on('connect', () => {
    socket.write(head);
    pump();
  });
  socket.on('data', (d: Buffer) => {
    raw = Buffer.concat([raw, d]);
    if (raw.includes('\r\n\r\n')) onAnswered();
  });
  socket.on('error', () => {});
  const done = new Promise<Upload>((resolve) => {
    socket.on('close', () => {
      closed = true;
      onAnswered();
      const text = raw.toString('latin1');
      const [headText = '', body = ''] = text.split('\r\n\r\n', 2);
      const [statusLine = '', ...lines] = headText.split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status: Number(statusLine.split(' ')[1] ?? 0), headers, body, sent });
    });
  });
  return { done, answered, release: () => socket.destroy(), sentSoFar: () => sent };
}

/** Measures the event loop's delay over `run`, and that GET /healthz, sent while it runs, answers 200. */
async function whileMeasuring<T>(t: Test, port: number, run: () => Promise<T>): Promise<T> {
  const probe = loopBlockProbe();
  const health = (async () => {
    await new Promise((resolve) => setTimeout(resolve, 20));
    return fetch(`http://127.0.0.1:${port}/healthz`);
  })();
  const result = await run();
  const healthz = await health;
  const block = probe.stop();
  t.equal(healthz.status, 200, 'a normal request (GET /healthz) is answered meanwhile');
  t.ok(block.samples > 0, 'the event loop was sampled');
  t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `the event loop was never blocked ${MAX_LOOP_BLOCK_MS} ms (max ${describeBlock(block)})`);
  return result;
}

async function listen(app: FastifyInstance): Promise<number> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  // The first fetch loads the HTTP client (undici) in this process: done here, outside the measured windows.
  await (await fetch(`http://127.0.0.1:${address.port}/healthz`)).arrayBuffer();
  return address.port;
}

t.test('an unknown model with a large declared body is answered 404 at once and its connection closed while the client still sends', async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * MiB } });
  const port = await listen(app);
  for (const [path, format] of [['/v2/models/nope/infer', 'oip'], ['/v1/models/nope/predict', 'ocular']] as const) {
    const res = await whileMeasuring(t, port, () => upload(port, path, { declared: 64 * MiB }).done);
    t.equal(res.status, 404, `${path}: 404`);
    const code = format === 'oip' ? V2ErrorSchema.parse(JSON.parse(res.body)).code : ErrorBodySchema.parse(JSON.parse(res.body)).code;
    t.equal(code, 'MODEL_NOT_FOUND', `${path}: MODEL_NOT_FOUND`);
    t.equal(res.headers['connection'], 'close', `${path}: Connection: close`);
    t.ok(res.sent < 64 * MiB, `${path}: closed after ${res.sent} of ${64 * MiB} bytes, before the body was read`);
  }
});

t.test('with API keys on, a request without a key is answered 401 at once and its connection closed while it still sends', async (t) => {
  const dir = t.testdir();
  const keys = join(dir, 'keys');
  writeFileSync(keys, `${KEY}\n`);
  const { app } = await buildTestApp(t, {
    manifestPath: writeTinyManifest(dir),
    config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * MiB, authKeysFile: keys },
  });
  const port = await listen(app);
  const res = await whileMeasuring(t, port, () => upload(port, '/v2/models/add/infer', { declared: 64 * MiB }).done);
  t.equal(res.status, 401);
  t.equal(V2ErrorSchema.parse(JSON.parse(res.body)).code, 'UNAUTHORIZED');
  t.equal(res.headers['connection'], 'close', 'Connection: close');
  t.ok(res.sent < 64 * MiB, `closed after ${res.sent} of ${64 * MiB} bytes`);
  // With the key, the same path is decided on (unknown version: 404) and closed the same way.
  const keyed = await upload(port, '/v2/models/add/versions/9/infer', { declared: 64 * MiB, headers: { 'x-api-key': KEY } }).done;
  t.equal(keyed.status, 404, 'with a key: decided from the URL (404 unknown version)');
  t.ok(keyed.sent < 64 * MiB, 'and closed before the body was read');
});

t.test('a full model queue answers 503 QUEUE_FULL with Retry-After before reading the body, and closes the connection', async (t) => {
  const dir = t.testdir();
  const manifestPath = writeTinyManifest(dir, (models) => {
    const add = models.find((m) => m['name'] === 'add') as Record<string, unknown>;
    add['batching'] = { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 1 };
  });
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * MiB } });
  const port = await listen(app);
  const stage = app.ocular.models.get('add')?.stages[0];
  if (stage === undefined) throw new Error('model add has no stage');
  // The bound is 1 queued + 1 running: two uploads that hold their slots (they never finish their bodies).
  const holders = [upload(port, '/v2/models/add/infer', { declared: 8 * MiB, pauseAfter: 64 * 1024 }), upload(port, '/v2/models/add/infer', { declared: 8 * MiB, pauseAfter: 64 * 1024 })];
  const hold = testHooksOf(stage.pool).hold();
  await hold.entered;
  while (holders.some((h) => h.sentSoFar() < 64 * 1024)) await new Promise((resolve) => setTimeout(resolve, 10));
  await new Promise((resolve) => setTimeout(resolve, 50));
  const res = await whileMeasuring(t, port, () => upload(port, '/v2/models/add/infer', { declared: 64 * MiB }).done);
  t.equal(res.status, 503);
  t.equal(res.headers['retry-after'], '1', 'Retry-After');
  t.equal(V2ErrorSchema.parse(JSON.parse(res.body)).code, 'QUEUE_FULL');
  t.equal(res.headers['connection'], 'close', 'Connection: close');
  t.ok(res.sent < 64 * MiB, `closed after ${res.sent} of ${64 * MiB} bytes`);
  for (const h of holders) h.release();
  hold.release();
  await hold.done;
  await Promise.all(holders.map((h) => h.done));
});

t.test('the cap on body bytes in flight refuses the (n+1)th large body while n are being read, and frees them after', async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, {
    manifestPath: writeTinyManifest(dir),
    config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * MiB, maxInflightBodyBytes: 40 * MiB },
  });
  const port = await listen(app);
  // Two 16 MiB bodies being read (paused after 1 MiB) reserve 32 MiB of the 40: a third would pass the cap.
  const reading = [0, 1].map(() => upload(port, '/v2/models/add/infer', { declared: 16 * MiB, pauseAfter: MiB }));
  const assertRefusals = async (): Promise<void> => {
    while (app.bodyBudget.held < 32 * MiB) await new Promise((resolve) => setTimeout(resolve, 10));
    const refused = await whileMeasuring(t, port, () => upload(port, '/v2/models/add/infer', { declared: 16 * MiB }).done);
    t.equal(refused.status, 503, 'the third is refused');
    t.equal(refused.headers['retry-after'], '1', 'Retry-After');
    t.equal(V2ErrorSchema.parse(JSON.parse(refused.body)).code, 'BODY_BYTES_BUSY');
    t.equal(refused.headers['connection'], 'close', 'Connection: close');
    t.ok(refused.sent < 16 * MiB, `refused before its body was read (${refused.sent} bytes sent)`);
    t.equal(app.bodyBudget.held, 32 * MiB, 'a refused body reserves nothing');

    // A chunked body is counted as it arrives, and cut off when it crosses the cap.
    const chunked = await whileMeasuring(t, port, () => upload(port, '/v1/models/add/predict', { chunked: true, declared: 16 * MiB }).done);
    t.equal(chunked.status, 503, `a chunked body crossing the cap is refused (status ${chunked.status}, ${chunked.sent} bytes sent, ${app.bodyBudget.held} held)`);
    t.equal(ErrorBodySchema.parse(JSON.parse(chunked.body)).code, 'BODY_BYTES_BUSY');
  };
  // Released however the assertions go: a held upload would keep the app from closing, and the file would time out.
  try {
    await assertRefusals();
  } finally {
    for (const r of reading) r.release();
  }
  await Promise.all(reading.map((r) => r.done));
  while (app.bodyBudget.held > 0) await new Promise((resolve) => setTimeout(resolve, 10));
  t.equal(app.bodyBudget.held, 0, 'the bytes are given back when the connections are gone');
  const body = JSON.stringify({
    inputs: [
      { name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] },
      { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] },
    ],
  });
  const ok = await fetch(`http://127.0.0.1:${port}/v2/models/add/infer`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
  t.equal(ok.status, 200, 'a normal request is admitted again');
  await ok.arrayBuffer();
  t.equal(app.bodyBudget.held, 0, 'and its bytes are given back with its answer');
});

/** POSTs `body` to `path`, with its Content-Length or chunked (64 KiB writes); resolves with the answer. */
function post(port: number, path: string, body: Buffer, headers: Record<string, string>, chunked: boolean): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, method: 'POST', path, agent: false, headers: { ...headers, ...(chunked ? {} : { 'content-length': String(body.length) }) } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    let at = 0;
    const pump = (): void => {
      while (at < body.length) {
        const piece = body.subarray(at, at + 64 * 1024);
        at += piece.length;
        if (!req.write(piece)) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

t.test('large v2 bodies, JSON and binary, declared and chunked, are read into memory of their own and parsed off the event loop', async (t) => {
  const dir = t.testdir();
  // S = ReduceSum(X) over every axis: the answer is one number that depends on every element of the body.
  const sum = encodeModel([{ opType: 'ReduceSum', input: ['X'], output: ['S'] }], [['X', FLOAT, ['N', 'W']]], [['S', FLOAT, [1, 1]]]);
  writeFileSync(join(dir, 'sum.onnx'), sum);
  const manifestPath = writeTinyManifest(dir, (models) => {
    models.push({ name: 'sum', version: '1', task: 'tensor', source: 'sum.onnx', sha256: sha256(sum), warmupShapes: { X: [1, 4] }, batching: { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 8 } });
  });
  const { app } = await buildTestApp(t, {
    manifestPath,
    config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * MiB, maxInflightBodyBytes: 256 * MiB, parseTimeoutMs: 120_000 },
  });
  const port = await listen(app);
  // 8 MiB each: 2 Mi FP32 values of 0.5, as JSON text (4 bytes a value) or as binary after a small JSON header.
  const width = 2 * 1024 * 1024;
  const json = Buffer.from(`{"inputs":[{"name":"X","shape":[1,${width}],"datatype":"FP32","data":[${'0.5,'.repeat(width - 1)}0.5]}]}`);
  const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'X', shape: [1, width], datatype: 'FP32', parameters: { binary_data_size: width * 4 } }] }));
  const binary = Buffer.concat([header, Buffer.from(new Float32Array(width).fill(0.5).buffer)]);
  const binaryHeaders = { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) };
  const cases = [
    { name: 'JSON, Content-Length', body: json, headers: { 'content-type': 'application/json' }, chunked: false },
    { name: 'JSON, chunked', body: json, headers: { 'content-type': 'application/json' }, chunked: true },
    { name: 'binary, Content-Length', body: binary, headers: binaryHeaders, chunked: false },
    { name: 'binary, chunked', body: binary, headers: binaryHeaders, chunked: true },
  ];
  const offThread = app.inferParser.offThread;
  const answers = await whileMeasuring(t, port, () => Promise.all(cases.map((c) => post(port, '/v2/models/sum/infer', c.body, c.headers, c.chunked))));
  t.equal(app.inferParser.offThread, offThread + cases.length, 'every body was parsed off the main thread, binary ones with a small JSON header too');
  for (const [i, c] of cases.entries()) {
    const answer = answers[i];
    t.equal(answer?.status, 200, `${c.name}: 200`);
    const output = InferenceResponseSchema.parse(JSON.parse(answer?.text ?? '')).outputs[0];
    t.same(output?.data, [width / 2], `${c.name}: the sum of every value sent (${width} x 0.5)`);
  }
  t.equal(app.bodyBudget.held, 0, 'every body byte is given back');
});

t.test('a large tensor input goes to the session thread without a copy on the event loop, and its answer is right', async (t) => {
  const dir = t.testdir();
  const sum = encodeModel([{ opType: 'ReduceSum', input: ['X'], output: ['S'] }], [['X', FLOAT, ['N', 'W']]], [['S', FLOAT, [1, 1]]]);
  writeFileSync(join(dir, 'sum.onnx'), sum);
  const manifestPath = writeTinyManifest(dir, (models) => {
    models.push({ name: 'sum', version: '1', task: 'tensor', source: 'sum.onnx', sha256: sha256(sum), warmupShapes: { X: [1, 4] }, batching: { maxBatchSize: 4, maxQueueDelayMs: 0, maxQueueSize: 8 } });
  });
  const { app } = await buildTestApp(t, {
    manifestPath,
    config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * MiB, maxInflightBodyBytes: 256 * MiB, parseTimeoutMs: 120_000 },
  });
  const port = await listen(app);
  // What the route hands the session pool, to see that it is moved (transferred), not copied.
  const pool = app.models.get('sum')?.stages[0]?.pool;
  if (pool === undefined) throw new Error('no pool for model sum');
  const fed: FeedData[] = [];
  const runTensors = pool.runTensors.bind(pool);
  pool.runTensors = (feeds, padTo) => {
    for (const feed of Object.values(feeds)) fed.push(feed.data);
    return runTensors(feeds, padTo);
  };
  // 32 MiB of FP32 (8 Mi values of 0.25, their sum exact in float32), as one binary tensor: a structured clone to the
  // session thread would copy all of it on this thread.
  const width = 8 * 1024 * 1024;
  const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'X', shape: [1, width], datatype: 'FP32', parameters: { binary_data_size: width * 4 } }] }));
  const values = new Float32Array(width).fill(0.25);
  values[width - 1] = 1024; // the last element counts too
  const body = Buffer.concat([header, Buffer.from(values.buffer)]);
  const headers = { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) };
  const answer = await whileMeasuring(t, port, () => post(port, '/v2/models/sum/infer', body, headers, false));
  t.equal(answer.status, 200);
  const output = InferenceResponseSchema.parse(JSON.parse(answer.text)).outputs[0];
  t.same(output?.data, [(width - 1) * 0.25 + 1024], 'the sum of every value sent');
  t.equal(fed.length, 1, 'one feed');
  t.equal(fed[0]?.byteLength, 0, 'the parsed tensor was moved to the session thread: no copy of it is left here');
  t.equal(app.bodyBudget.held, 0, 'every body byte is given back');
});

/** A v2 JSON request whose data is `n` numbers: cheap to build (a repeated string), slow to parse when large. */
function jsonBody(n: number): Buffer {
  return Buffer.from(`{"inputs":[{"name":"x","shape":[${n}],"datatype":"FP32","data":[${'0.5,'.repeat(n - 1)}0.5]}]}`);
}

t.test('the parse pool refuses past its queue bound with 503 PARSER_BUSY, and replaces a thread past its time limit', async (t) => {
  const parser = new InferParser({ inlineMaxBytes: 1024, threads: 1, queueSize: 1, timeoutMs: 100 });
  t.teardown(() => parser.close());
  t.equal(parser.threads, 1);
  // Warm the thread up (its start is not counted against the limit, but the test needs it loaded).
  t.equal((await parser.parse(jsonBody(1000), undefined)).inputs.length, 1, 'a small body past the inline size is parsed off the thread');
  const big = jsonBody(12_000_000);
  const probe = loopBlockProbe();
  const first = parser.parse(big, undefined);
  const second = parser.parse(jsonBody(1000), undefined);
  const third = parser.parse(jsonBody(1000), undefined);
  await t.rejects(third, { code: 'PARSER_BUSY', status: 503 }, 'one running, one queued: the third is refused at once');
  await t.rejects(first, { code: 'PARSE_TIMEOUT', status: 413 }, 'a body past the time limit fails with PARSE_TIMEOUT');
  t.equal(parser.timedOut, 1, 'its thread was terminated');
  // Until the terminated thread is gone, its slot stays taken.
  t.equal(parser.retiring, 1, 'the terminated thread holds its slot until it has exited');
  t.equal(parser.queued, 1, 'the queued body waits for it, not for a thread started beside it');
  const parsed = await second;
  t.equal(parsed.inputs[0]?.shape[0], 1000, 'the queued body is parsed by a fresh thread');
  const block = probe.stop();
  t.ok(block.samples > 0, 'the event loop was sampled');
  t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `the event loop was never blocked ${MAX_LOOP_BLOCK_MS} ms (max ${describeBlock(block)})`);
});

t.test('a thread past its time limit inside a large JSON header stops at once, not when the parse would have ended', async (t) => {
  const n = 3_000_000; // 12 MB of JSON text, past STOPPABLE_JSON_BYTES
  // The whole parse's time, on this machine now, for the comparison below.
  const patient = new InferParser({ inlineMaxBytes: 1024, threads: 1, queueSize: 1, timeoutMs: 300_000 });
  t.teardown(() => patient.close());
  await patient.parse(jsonBody(1000), undefined);
  let started = performance.now();
  t.equal((await patient.parse(jsonBody(n), undefined)).inputs[0]?.shape[0], n, 'parsed whole with time to do it');
  const wholeMs = performance.now() - started;
  await patient.close();

  const parser = new InferParser({ inlineMaxBytes: 1024, threads: 1, queueSize: 1, timeoutMs: 100 });
  t.teardown(() => parser.close());
  await parser.parse(jsonBody(1000), undefined);
  const slow = parser.parse(jsonBody(n), undefined);
  const next = parser.parse(jsonBody(1000), undefined);
  await t.rejects(slow, { code: 'PARSE_TIMEOUT', status: 413 });
  started = performance.now();
  while (parser.retiring > 0) await new Promise((resolve) => setTimeout(resolve, 2));
  const stopMs = performance.now() - started;
  t.ok(stopMs < wholeMs / 4, `the terminated thread was gone ${stopMs.toFixed(0)} ms after its time limit; the whole parse takes ${wholeMs.toFixed(0)} ms`);
  t.equal((await next).inputs[0]?.shape[0], 1000, 'the body behind it is parsed by a fresh thread');
});

t.test('a thread that parsed a large body is replaced, and what the body left in it given back', async (t) => {
  const parser = new InferParser({ inlineMaxBytes: 1024, threads: 1, queueSize: 1, timeoutMs: 60_000 });
  t.teardown(() => parser.close());
  await parser.parse(jsonBody(1000), undefined);
  const values = RECYCLE_ABOVE_BYTES / 4 + 1024;
  const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: [values], datatype: 'FP32', parameters: { binary_data_size: values * 4 } }] }));
  const before = process.memoryUsage().arrayBuffers;
  // A body of its own (transferred to the thread), past RECYCLE_ABOVE_BYTES.
  const parsed = await parser.parse(Buffer.concat([header, Buffer.alloc(values * 4)]), header.length);
  t.equal(parsed.inputs[0]?.data.length, values, 'parsed');
  t.equal(parser.recycled, 1, 'its thread is ended once done');
  while (parser.retiring > 0) await new Promise((resolve) => setTimeout(resolve, 10));
  const held = process.memoryUsage().arrayBuffers - before;
  // The parsed tensor (values x 4 bytes) is held here; the body itself, as large, is gone with its thread.
  t.ok(held < values * 4 + RECYCLE_ABOVE_BYTES / 2, `${(held / MiB).toFixed(1)} MiB of buffers held: the tensor, not the body too`);
  const small = await parser.parse(jsonBody(1000), undefined);
  t.equal(small.inputs[0]?.shape[0], 1000, 'the next body is parsed by a fresh thread');
  t.equal(parser.recycled, 1, 'a small body does not end its thread');
});

t.test('the parse pool runs as many threads as it is given, bodies in parallel', async (t) => {
  const parser = new InferParser({ inlineMaxBytes: 1024, threads: 2, queueSize: 0, timeoutMs: 10_000 });
  t.teardown(() => parser.close());
  const both = await Promise.all([parser.parse(jsonBody(1000), undefined), parser.parse(jsonBody(2000), undefined)]);
  t.same(
    both.map((p) => p.inputs[0]?.shape[0]),
    [1000, 2000],
    'two bodies at once with no queue: each has a thread',
  );
  await t.rejects(Promise.all([parser.parse(jsonBody(1000), undefined), parser.parse(jsonBody(1000), undefined), parser.parse(jsonBody(3000), undefined)]), {
    code: 'PARSER_BUSY',
  });
});
