/**
 * The Open Inference Protocol (KServe v2) REST API on tiny models written by the test: every endpoint's request
 * and response schemas, the specification's own examples (corrected where they are malformed), every JSON
 * datatype, the binary tensor data extension, the classification extension, errors, and large JSON bodies
 * parsed off the event loop.
 */
import { writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { buildTestApp } from '../helpers/app.js';
import {
  InferenceRequestSchema,
  LiveSchema,
  ModelMetadataSchema,
  ModelReadySchema,
  ReadySchema,
  RepositoryIndexSchema,
  ServerMetadataSchema,
} from '../../src/protocols/oip/schemas.js';
import { V2ErrorSchema } from '../../src/errors.js';
import { halfToNumber, numberToHalf } from '../../src/core/tensor-codec.js';
import { binaryRequest, float32Of, readResponse, sha256, wideAddModel, writeTinyManifest } from './helpers.js';

t.test('v2 protocol on tiny generated models', async (t) => {
  const manifestPath = writeTinyManifest(t.testdir());
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * 1024 * 1024 } });
  const get = (url: string) => app.inject({ method: 'GET', url });
  const infer = (model: string, body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
    app.inject({ method: 'POST', url: `/v2/models/${model}/infer`, headers, payload: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body) });
  const isV2Error = (t: Test, res: Awaited<ReturnType<typeof get>>, status: number, code: string) => {
    t.equal(res.statusCode, status, `status ${status}`);
    const body = V2ErrorSchema.parse(res.json());
    t.equal(body.code, code, `code ${code} (${body.error})`);
    t.ok(body.error.length > 0, 'the protocol\'s "error" field says why');
  };

  t.test('server metadata, liveness and readiness', async (t) => {
    const meta = await get('/v2');
    t.equal(meta.statusCode, 200);
    const m = ServerMetadataSchema.parse(meta.json());
    t.equal(m.name, 'ocular');
    t.same(m.extensions.sort(), ['binary_tensor_data', 'classification', 'model_repository']);
    t.same(LiveSchema.parse((await get('/v2/health/live')).json()), { live: true });
    const ready = await get('/v2/health/ready');
    t.equal(ready.statusCode, 200);
    t.same(ReadySchema.parse(ready.json()), { ready: true });
    t.equal((await get('/readyz')).statusCode, 200, '/readyz agrees');
  });

  t.test('model metadata: platform, datatypes, -1 for dynamic dims, with and without a version', async (t) => {
    for (const url of ['/v2/models/mymodel', '/v2/models/mymodel/versions/1']) {
      const res = await get(url);
      t.equal(res.statusCode, 200, url);
      const m = ModelMetadataSchema.parse(res.json());
      t.same(m, {
        name: 'mymodel',
        versions: ['1'],
        platform: 'onnxruntime_onnx',
        inputs: [
          { name: 'input0', datatype: 'FP32', shape: [-1, 2] },
          { name: 'input1', datatype: 'BOOL', shape: [3] },
        ],
        outputs: [
          { name: 'output0', datatype: 'FP32', shape: [-1, 2] },
          { name: 'output1', datatype: 'BOOL', shape: [3] },
        ],
      });
    }
    isV2Error(t, await get('/v2/models/mymodel/versions/2'), 404, 'MODEL_NOT_FOUND');
    isV2Error(t, await get('/v2/models/nosuch'), 404, 'MODEL_NOT_FOUND');
    const ready = await get('/v2/models/mymodel/ready');
    t.equal(ready.statusCode, 200);
    t.same(ModelReadySchema.parse(ready.json()), { name: 'mymodel', ready: true });
    t.equal((await get('/v2/models/mymodel/versions/1/ready')).statusCode, 200);
    isV2Error(t, await get('/v2/models/nosuch/ready'), 404, 'MODEL_NOT_FOUND');
    isV2Error(t, await get('/v2/nosuch'), 404, 'NOT_FOUND');
  });

  t.test("the specification's inference example, corrected", async (t) => {
    // As printed, input1 says shape [3] but holds one element: corrected to three; input0 is UINT32 where the
    // model takes FP32, so the request asks for the (exact) conversion.
    const request = {
      id: '42',
      parameters: { convert_datatype: true },
      inputs: [
        { name: 'input0', shape: [2, 2], datatype: 'UINT32', data: [1, 2, 3, 4] },
        { name: 'input1', shape: [3], datatype: 'BOOL', data: [true, false, true] },
      ],
      outputs: [{ name: 'output0' }],
    };
    InferenceRequestSchema.parse(request);
    const res = await infer('mymodel', request);
    t.equal(res.statusCode, 200, res.body.slice(0, 200));
    t.match(res.headers['content-type'], /application\/json/);
    const { json } = readResponse(res.rawPayload, undefined);
    t.same(json, {
      model_name: 'mymodel',
      model_version: '1',
      id: '42',
      outputs: [{ name: 'output0', datatype: 'FP32', shape: [2, 2], data: [1, 2, 3, 4] }],
    });

    // As printed, rejected: the element count does not match the shape.
    const asPrinted = { ...request, inputs: [request.inputs[0], { name: 'input1', shape: [3], datatype: 'BOOL', data: [true] }] };
    isV2Error(t, await infer('mymodel', asPrinted), 400, 'INVALID_REQUEST');

    // Every output when none is asked for; nested data is row-major.
    const all = await infer('mymodel', {
      inputs: [
        { name: 'input0', shape: [2, 2], datatype: 'FP32', data: [[1.5, 2.5], [3.5, 4.5]] },
        { name: 'input1', shape: [3], datatype: 'BOOL', data: [true, false, true] },
      ],
    });
    t.equal(all.statusCode, 200);
    const both = readResponse(all.rawPayload, undefined).json;
    t.notOk('id' in both, 'no id when the request had none');
    t.same(both.outputs.map((o) => [o.name, o.datatype, o.shape, o.data]), [
      ['output0', 'FP32', [2, 2], [1.5, 2.5, 3.5, 4.5]],
      ['output1', 'BOOL', [3], [false, true, false]],
    ]);
    t.equal((await app.inject({ method: 'POST', url: '/v2/models/mymodel/versions/1/infer', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(request) })).statusCode, 200, 'with the version in the path');
    isV2Error(t, await app.inject({ method: 'POST', url: '/v2/models/mymodel/versions/7/infer', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(request) }), 404, 'MODEL_NOT_FOUND');
  });

  t.test('a datatype other than the model\'s is refused, as Triton; converted only when asked and exact', async (t) => {
    const values: Record<string, [unknown[], number[]]> = {
      FP16: [[1.5, -2, 65504, 0.0999755859375], [1.5, -2, 65504, 0.0999755859375]],
      FP64: [[0.5, -2, 3, 4], [0.5, -2, 3, 4]],
      INT64: [[-5, 6, 2 ** 24, 0], [-5, 6, 2 ** 24, 0]],
      INT32: [[-5, 6, 7, 8], [-5, 6, 7, 8]],
      INT8: [[-128, 127, 0, 1], [-128, 127, 0, 1]],
      UINT8: [[0, 255, 7, 8], [0, 255, 7, 8]],
      UINT32: [[0, 2 ** 24, 7, 8], [0, 2 ** 24, 7, 8]],
      BOOL: [[true, false, false, true], [1, 0, 0, 1]],
    };
    const request = (datatype: string, data: unknown[], parameters?: Record<string, boolean>) => ({
      inputs: [
        { name: 'input0', shape: [2, 2], datatype, data, ...(parameters !== undefined ? { parameters } : {}) },
        { name: 'input1', shape: [3], datatype: 'BOOL', data: [true, true, true] },
      ],
      outputs: [{ name: 'output0' }],
    });
    const exact = await infer('mymodel', request('FP32', [1.25, -2, 3.5, 0]));
    t.same(readResponse(exact.rawPayload, undefined).json.outputs[0]?.data, [1.25, -2, 3.5, 0], 'FP32 into FP32');
    for (const [datatype, [data, want]] of Object.entries(values)) {
      const refused = await infer('mymodel', request(datatype, data));
      isV2Error(t, refused, 400, 'INVALID_REQUEST');
      t.match(refused.json<{ error: string }>().error, new RegExp(`input "input0" is ${datatype} but model "mymodel" takes FP32`), `${datatype}: names both`);
      const res = await infer('mymodel', request(datatype, data, { convert_datatype: true }));
      t.equal(res.statusCode, 200, `${datatype}, convert_datatype: 200 ${res.statusCode === 200 ? '' : res.body}`);
      if (res.statusCode === 200) t.same(readResponse(res.rawPayload, undefined).json.outputs[0]?.data, want, `${datatype}: values`);
    }
    // Asked for, a conversion that would change a value is refused: FP32 has no 2^24 + 1, 0.001 or 4294967295.
    for (const [datatype, bad] of [['INT64', 2 ** 24 + 1], ['FP64', 1e-3], ['UINT32', 4294967295]] as const) {
      const res = await infer('mymodel', { parameters: { convert_datatype: true }, ...request(datatype, [bad, 0, 0, 0]) });
      isV2Error(t, res, 400, 'INVALID_REQUEST');
      t.match(res.json<{ error: string }>().error, /element 0 .* is not exactly representable in FP32/, `${datatype} ${bad}: not exact`);
    }
    // The same rule for binary inputs.
    const bin = binaryRequest([
      { name: 'A', datatype: 'INT64', shape: [1, 4], bytes: Buffer.from(new BigInt64Array([1n, 2n, 3n, 4n]).buffer) },
      { name: 'B', datatype: 'FP32', shape: [1, 4], bytes: Buffer.alloc(16) },
    ]);
    isV2Error(t, await infer('add', bin.body, bin.headers), 400, 'INVALID_REQUEST');
    t.equal(halfToNumber(numberToHalf(0.1)), 0.0999755859375, 'FP16 rounds to nearest');
    for (const [datatype, bad] of [['INT8', 128], ['UINT8', -1], ['INT32', 1.5], ['BOOL', 1], ['FP32', 'x']] as const) {
      isV2Error(t, await infer('mymodel', { inputs: [{ name: 'input0', shape: [1, 2], datatype, data: [bad, bad] }, { name: 'input1', shape: [3], datatype: 'BOOL', data: [true, true, true] }] }), 400, 'INVALID_REQUEST');
    }
  });

  t.test('binary tensor data extension: binary inputs, binary outputs on request', async (t) => {
    const a = new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]);
    const b = new Float32Array([10, 20, 30, 40, 50, 60, 70, 80]);
    const { body, headers } = binaryRequest(
      [
        { name: 'A', datatype: 'FP32', shape: [2, 4], bytes: Buffer.from(a.buffer) },
        { name: 'B', datatype: 'FP32', shape: [2, 4], bytes: Buffer.from(b.buffer) },
      ],
      { id: 'bin', parameters: { binary_data_output: true } },
    );
    const res = await infer('add', body, headers);
    t.equal(res.statusCode, 200, res.statusCode === 200 ? '' : res.body);
    t.match(res.headers['content-type'], /application\/octet-stream/);
    const { json, binary } = readResponse(res.rawPayload, res.headers['inference-header-content-length']);
    t.equal(json.id, 'bin');
    t.same(json.outputs[0]?.parameters, { binary_data_size: 32 });
    t.notOk(json.outputs[0]?.data, 'no JSON data for a binary output');
    t.same([...float32Of(binary.get('C') as Buffer)], [11, 22, 33, 44, 55, 66, 77, 88]);

    // Per output: binary_data false overrides binary_data_output; a JSON input mixed with a binary one.
    const mixedHeader = Buffer.from(
      JSON.stringify({
        parameters: { binary_data_output: true },
        inputs: [
          { name: 'A', datatype: 'FP32', shape: [1, 4], parameters: { binary_data_size: 16 } },
          { name: 'B', datatype: 'INT32', shape: [1, 4], data: [1, 1, 1, 1], parameters: { convert_datatype: true } },
        ],
        outputs: [{ name: 'C', parameters: { binary_data: false } }],
      }),
    );
    const mixed = await infer('add', Buffer.concat([mixedHeader, Buffer.from(new Float32Array([1, 2, 3, 4]).buffer)]), {
      'content-type': 'application/octet-stream',
      'inference-header-content-length': String(mixedHeader.length),
    });
    t.equal(mixed.statusCode, 200);
    t.same(readResponse(mixed.rawPayload, undefined).json.outputs[0]?.data, [2, 3, 4, 5]);

    // Sizes that do not add up.
    const short = binaryRequest([{ name: 'A', datatype: 'FP32', shape: [2, 4], bytes: Buffer.alloc(16) }, { name: 'B', datatype: 'FP32', shape: [1, 4], bytes: Buffer.alloc(16) }]);
    isV2Error(t, await infer('add', short.body, short.headers), 400, 'INVALID_REQUEST');
    const extra = binaryRequest([{ name: 'A', datatype: 'FP32', shape: [1, 4], bytes: Buffer.alloc(16) }, { name: 'B', datatype: 'FP32', shape: [1, 4], bytes: Buffer.alloc(16) }]);
    isV2Error(t, await infer('add', Buffer.concat([extra.body, Buffer.alloc(3)]), extra.headers), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('add', extra.body, { ...extra.headers, 'inference-header-content-length': 'x' }), 400, 'INVALID_REQUEST');
  });

  t.test('classification extension: top k of the last dimension as "value:index"', async (t) => {
    const res = await infer('add', {
      inputs: [
        { name: 'A', shape: [2, 4], datatype: 'FP32', data: [0.1, 0.9, 0.3, 0.2, 5, 1, 7, 2] },
        { name: 'B', shape: [2, 4], datatype: 'FP32', data: [0, 0, 0, 0, 0, 0, 0, 0] },
      ],
      outputs: [{ name: 'C', parameters: { classification: 2 } }],
    });
    t.equal(res.statusCode, 200);
    const out = readResponse(res.rawPayload, undefined).json.outputs[0];
    t.equal(out?.datatype, 'BYTES');
    t.same(out?.shape, [2, 2]);
    const parsed = (out?.data as string[]).map((s) => s.split(':').map(Number));
    t.same(parsed.map((p) => p[1]), [1, 2, 2, 0], 'indices of the top 2 per row');
    t.ok(Math.abs((parsed[0]?.[0] ?? 0) - 0.9) < 1e-6, 'the raw value first');
  });

  t.test('errors: protocol body, catalog code, spec statuses', async (t) => {
    isV2Error(t, await infer('mymodel', '{"inputs": ['), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('mymodel', { inputs: [] }), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('mymodel', { inputs: [{ name: 'input0', shape: [1, 2], datatype: 'FP99', data: [1, 2] }] }), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('mymodel', { inputs: [{ name: 'input0', shape: [1, 2], datatype: 'FP32', data: [1, 2] }] }), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('mymodel', { inputs: [{ name: 'nope', shape: [1], datatype: 'FP32', data: [1] }] }), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('add', { inputs: [{ name: 'A', shape: [1, 3], datatype: 'FP32', data: [1, 2, 3] }, { name: 'B', shape: [1, 3], datatype: 'FP32', data: [1, 2, 3] }] }), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('add', { inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }], outputs: [{ name: 'D' }] }), 400, 'INVALID_REQUEST');
    isV2Error(t, await infer('nosuch', { inputs: [{ name: 'A', shape: [1], datatype: 'FP32', data: [1] }] }), 404, 'MODEL_NOT_FOUND');
    isV2Error(t, await app.inject({ method: 'POST', url: '/v2/models/add/infer' }), 400, 'INVALID_REQUEST');
    const idx = await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/json' }, payload: '{"ready": true}' });
    t.equal(idx.statusCode, 200);
    t.same(RepositoryIndexSchema.parse(idx.json()).map((m) => m.name), ['add', 'mymodel']);
  });

  t.test('tensor requests share the batcher: concurrent one-row requests run as fewer batches', async (t) => {
    const before = await app.ocular.metrics.batchSize.get();
    const count = (v: typeof before) => v.values.filter((s) => s.metricName === 'ocular_batch_size_count' && s.labels['model'] === 'add').reduce((n, s) => n + s.value, 0);
    const answers = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        infer('add', { inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [i, i, i, i] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }] }),
      ),
    );
    answers.forEach((res, i) => t.same(readResponse(res.rawPayload, undefined).json.outputs[0]?.data, [i + 1, i + 2, i + 3, i + 4], `request ${i} gets its own rows`));
    const batches = count(await app.ocular.metrics.batchSize.get()) - count(before);
    t.ok(batches < 16, `16 requests ran in ${batches} batches`);
  });
});

// Its own app: a request is bounded by the model's maxBatchSize (rows), so the large body is one row of a model
// whose second dim is dynamic (`wideadd`: C = A + B, FP32 [-1, -1]).
t.test('a large JSON body is parsed off the event loop: /healthz answers meanwhile', async (t) => {
  const dir = t.testdir();
  const wide = wideAddModel();
  writeFileSync(join(dir, 'wideadd.onnx'), wide);
  const manifestPath = writeTinyManifest(dir, (models) => {
    models.push({ name: 'wideadd', version: '1', task: 'tensor', source: 'wideadd.onnx', sha256: sha256(wide), warmupShapes: { A: [1, 4], B: [1, 4] } });
  });
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 64 * 1024 * 1024 } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as AddressInfo).port;
  // ~ 36 MB of JSON (12 million numbers): past the v1 body limit (20 MiB), within the tensor body limit.
  const width = 6_000_000;
  const data = Array.from({ length: width }, (_, i) => i % 97);
  const body = Buffer.from(JSON.stringify({
    parameters: { binary_data_output: true },
    inputs: [
      { name: 'A', shape: [1, width], datatype: 'FP32', data },
      { name: 'B', shape: [1, width], datatype: 'FP32', data },
    ],
  }));
  let uploaded = false;
  let done = false;
  let healthDuring = 0;
  const inferDone = new Promise<number>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: '/v2/models/wideadd/infer', headers: { 'content-type': 'application/json', 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => {
        done = true;
        resolve(res.statusCode ?? 0);
      });
    });
    req.on('error', reject);
    req.end(body, () => {
      uploaded = true;
    });
  });
  // Poll /healthz until the infer answers; count the answers that came after the whole body was sent.
  const poll = async () => {
    while (!done) {
      const status = await new Promise<number>((resolve) => {
        httpRequest({ host: '127.0.0.1', port, path: '/healthz' }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        })
          .on('error', () => resolve(0))
          .end();
      });
      if (uploaded && !done && status === 200) healthDuring++;
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const [status] = await Promise.all([inferDone, poll()]);
  t.equal(status, 200, 'the large request succeeds');
  t.ok(healthDuring > 0, `/healthz answered ${healthDuring} times while the large body was parsed and run`);
});
