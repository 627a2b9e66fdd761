/**
 * Bounded answers (issue 18, item 3): a v2 answer is bounded from its outputs' shapes and datatypes before it is
 * written, and refused 422 RESPONSE_TOO_LARGE over OCULAR_MAX_RESPONSE_BYTES; a large one is streamed a part per
 * turn of the event loop, as fast as the client reads; a client that reads nothing is cut off by
 * OCULAR_RESPONSE_WRITE_TIMEOUT_MS. An echo model (Identity, FP32 [N, K]) makes an answer of any size from a binary
 * request a sixth of its JSON size. The server runs in this process, on a real port, so that an event-loop delay
 * probe sees what serving costs it. scripts/hardening/answers.ts replays the full-size case.
 */
import { connect, type Socket } from 'node:net';
import t, { type Test } from 'tap';
import { describeBlock, MAX_LOOP_BLOCK_MS, measureLoopBlock } from '../helpers/loop-block.js';
import { buildTestApp } from '../helpers/app.js';
import { V2ErrorSchema } from '../../src/errors.js';
import { writeInferResponse } from '../../src/protocols/oip/response.js';
import type { Config } from '../../src/config/config.js';
import { binaryRequest, encodeModel, FLOAT, readResponse, sha256, writeTinyManifest } from '../v2/helpers.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A manifest serving `echo`: Identity over FP32 [N, K]. */
function echoManifest(dir: string): string {
  const echo = encodeModel([{ opType: 'Identity', input: ['X'], output: ['Y'] }], [['X', FLOAT, ['N', 'K']]], [['Y', FLOAT, ['N', 'K']]]);
  writeFileSync(join(dir, 'echo.onnx'), echo);
  return writeTinyManifest(dir, (models) => {
    models.push({ name: 'echo', version: '1', task: 'tensor', source: 'echo.onnx', sha256: sha256(echo), warmupShapes: { X: [1, 4] } });
  });
}

/** Values whose JSON is long (about 19 characters each), seeded. */
function values(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

function echoRequest(x: Float32Array, extra: Record<string, unknown> = {}) {
  return binaryRequest([{ name: 'X', datatype: 'FP32', shape: [1, x.length], bytes: Buffer.from(x.buffer, x.byteOffset, x.byteLength) }], extra);
}

/** What the echo model answers to `x`, for writeInferResponse. */
function echoAnswer(x: Float32Array): Parameters<typeof writeInferResponse>[0] {
  return {
    modelName: 'echo',
    modelVersion: '1',
    outputs: [{ name: 'Y', datatype: 'FP32', shape: [1, x.length], data: x }],
    outputParameters: [{}],
    binaryOutputs: [],
    binaryAll: false,
  };
}

async function serve(t: Test, config: Partial<Config>) {
  const { app, logs } = await buildTestApp(t, { manifestPath: echoManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0, ...config } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { app, logs, base: `http://127.0.0.1:${address.port}`, port: address.port };
}

/** GET /healthz repeatedly until `until` settles; resolves with every status seen. */
async function probeWhile(base: string, until: Promise<unknown>): Promise<number[]> {
  const statuses: number[] = [];
  let done = false;
  void until.finally(() => (done = true)).catch(() => undefined);
  do {
    statuses.push((await fetch(`${base}/healthz`)).status);
    await new Promise((r) => setTimeout(r, 20));
  } while (!done);
  return statuses;
}

async function infer(base: string, req: { body: Buffer; headers: Record<string, string> }) {
  const res = await fetch(`${base}/v2/models/echo/infer`, { method: 'POST', headers: req.headers, body: req.body });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

t.test('an answer over OCULAR_MAX_RESPONSE_BYTES is refused 422 RESPONSE_TOO_LARGE, naming the limit, before it is written', async (t) => {
  const limit = 4 * 1024 * 1024;
  const { base } = await serve(t, { maxResponseBytes: limit });
  // 300 000 FP32 values: 1.2 MB in binary, up to 7.5 MB in JSON.
  const x = values(300_000);
  const { value, ...block } = await measureLoopBlock(async () => {
    const answer = infer(base, echoRequest(x));
    const probes = await probeWhile(base, answer);
    return { answer: await answer, probes };
  });
  t.equal(value.answer.status, 422);
  const err = V2ErrorSchema.parse(JSON.parse(value.answer.body.toString('utf8')));
  t.equal(err.code, 'RESPONSE_TOO_LARGE');
  t.match(err.error, /OCULAR_MAX_RESPONSE_BYTES/, 'the message names the option');
  t.match(err.error, String(limit), 'and the limit');
  const bound = Number(/up to (\d+) bytes/.exec(err.error)?.[1]);
  t.ok(bound >= 300_000 * 25, `and the bound of the answer, at least 25 bytes per value (${bound})`);
  t.ok(value.probes.length > 0 && value.probes.every((s) => s === 200), `/healthz answered meanwhile (${value.probes.length} probes)`);
  t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `event loop blocked at most ${describeBlock(block)}`);

  // The same outputs in binary fit: 1.2 MB, streamed (over 1 MiB), byte for byte the input.
  const binary = await infer(base, echoRequest(x, { parameters: { binary_data_output: true } }));
  t.equal(binary.status, 200, 'asked for in binary, the same answer fits');
  const { json, binary: outputs } = readResponse(binary.body, binary.headers.get('inference-header-content-length') ?? undefined);
  t.same(json.outputs[0]?.shape, [1, 300_000]);
  t.ok(outputs.get('Y')?.equals(Buffer.from(x.buffer)), 'the binary output is the input, exactly');
});

t.test('a large JSON answer is streamed: other requests are answered meanwhile, and it is the answer written whole', async (t) => {
  const { base } = await serve(t, {});
  // 100 000 values: up to 2.5 MB of JSON (over the 1 MiB streaming threshold).
  const x = values(100_000, 7);
  const { value, ...block } = await measureLoopBlock(async () => {
    const answer = infer(base, echoRequest(x));
    const probes = await probeWhile(base, answer);
    return { answer: await answer, probes };
  });
  t.equal(value.answer.status, 200);
  t.equal(value.answer.headers.get('content-type'), 'application/json');
  t.ok(value.probes.every((s) => s === 200), `/healthz answered meanwhile (${value.probes.length} probes)`);
  t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `event loop blocked at most ${describeBlock(block)}`);
  const whole = writeInferResponse(echoAnswer(x));
  if (whole.type !== 'json') throw new Error('expected JSON');
  t.ok(value.answer.body.equals(Buffer.from(whole.body)), 'the streamed answer is byte for byte the answer written whole');
});

t.test('a client that never reads its answer is cut off by the write timeout, and the server goes on', async (t) => {
  const writeTimeoutMs = 500;
  const { app, base, port, logs } = await serve(t, { responseWriteTimeoutMs: writeTimeoutMs });
  const serverSockets: Socket[] = [];
  app.server.on('connection', (s: Socket) => serverSockets.push(s));
  // 1 500 000 values: about 28 MB of JSON, far more than the sockets' buffers hold.
  const x = values(1_500_000, 3);
  const req = echoRequest(x);
  const { value, ...block } = await measureLoopBlock(async () => {
    const before = serverSockets.length;
    const client = connect(port, '127.0.0.1');
    client.on('error', () => undefined);
    await new Promise<void>((resolve) => client.once('connect', resolve));
    client.pause(); // reads nothing
    const head = Object.entries({ ...req.headers, 'content-length': String(req.body.length), host: 'localhost' })
      .map(([k, v]) => `${k}: ${v}`)
      .join('\r\n');
    client.write(`POST /v2/models/echo/infer HTTP/1.1\r\n${head}\r\n\r\n`);
    client.write(req.body);
    while (serverSockets.length === before) await new Promise((r) => setTimeout(r, 10));
    const server = serverSockets[before] as Socket;
    const closed = new Promise<void>((resolve) => (server.destroyed ? resolve() : server.once('close', () => resolve())));
    const probes = await probeWhile(base, closed);
    await closed;
    client.destroy();
    return { server, probes };
  });
  t.ok(value.server.destroyed, 'the server closed the connection');
  const whole = writeInferResponse(echoAnswer(x));
  t.ok(value.server.bytesWritten < whole.body.length, `before the answer was written (${value.server.bytesWritten} of ${whole.body.length} bytes)`);
  const cut = logs.find('answer not read in time: connection closed');
  t.equal(cut.length, 1, 'the cut is logged');
  t.equal(cut[0]?.['timeoutMs'], writeTimeoutMs);
  t.ok(value.probes.length > 0 && value.probes.every((s) => s === 200), `/healthz answered meanwhile (${value.probes.length} probes)`);
  t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `event loop blocked at most ${describeBlock(block)}`);
  const after = await infer(base, echoRequest(values(10, 5)));
  t.equal(after.status, 200, 'a normal request is answered afterwards');
});
