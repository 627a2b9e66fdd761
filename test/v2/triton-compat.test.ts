/**
 * What strict Triton clients expect of the v2 API (issue #19): the model configuration endpoint with the fields
 * perf_analyzer's model parser reads, compressed requests and answers (and a gzip bomb refused 413 before it is
 * inflated), classification flattened per batch row, the image input described in metadata and configuration, and
 * BYTES refused under any other input name.
 */
import { Readable } from 'node:stream';
import { deflateSync, gunzipSync, gzipSync, inflateSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { writeSubsetManifest } from '../helpers/manifest-subset.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { readFileSync } from 'node:fs';
import { OcularError, V2ErrorSchema } from '../../src/errors.js';
import { decompressBody, responseCoding } from '../../src/protocols/oip/content-encoding.js';
import { classify } from '../../src/protocols/oip/model.js';
import { ModelConfigSchema, ModelMetadataSchema } from '../../src/protocols/oip/schemas.js';
import { bytesElements, readResponse, writeTinyManifest } from './helpers.js';

const ADD = JSON.stringify({ inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] }] });

const v2Error = (t: Test, res: { statusCode: number; json: () => unknown }, status: number, code: string): string => {
  t.equal(res.statusCode, status, `status ${status}`);
  const body = V2ErrorSchema.parse(res.json());
  t.equal(body.code, code, `code ${code}: ${body.error}`);
  return body.error;
};

t.test('v2 on tiny models: configuration, compression, BYTES names', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: 256 * 1024 } });
  const get = (url: string) => app.inject({ method: 'GET', url });
  const infer = (body: string | Buffer, headers: Record<string, string> = {}) =>
    app.inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json', ...headers }, payload: body });

  t.test('GET /v2/models/{name}[/versions/{v}]/config: the fields perf_analyzer reads', async (t) => {
    const res = await get('/v2/models/add/config');
    t.equal(res.statusCode, 200);
    const config = ModelConfigSchema.parse(res.json());
    t.same(config, {
      name: 'add',
      platform: 'onnxruntime_onnx',
      backend: 'onnxruntime',
      max_batch_size: 8,
      input: [
        { name: 'A', data_type: 'TYPE_FP32', dims: [4] },
        { name: 'B', data_type: 'TYPE_FP32', dims: [4] },
      ],
      output: [{ name: 'C', data_type: 'TYPE_FP32', dims: [4] }],
      dynamic_batching: {
        max_queue_delay_microseconds: 0,
        preserve_ordering: true,
        default_queue_policy: { timeout_action: 'REJECT', default_timeout_microseconds: config.dynamic_batching?.default_queue_policy.default_timeout_microseconds ?? -1, allow_timeout_override: false, max_queue_size: 64 },
      },
      instance_group: [{ name: 'add', kind: 'KIND_CPU', count: config.instance_group[0]?.count ?? 0 }],
      model_transaction_policy: { decoupled: false },
      response_cache: { enable: false },
    });
    // perf_analyzer: every config input and output has metadata of the same name; metadata shapes start with the
    // batch dimension when max_batch_size > 0 (it skips it).
    const meta = ModelMetadataSchema.parse((await get('/v2/models/add')).json());
    for (const c of [...config.input, ...config.output]) {
      const m = [...meta.inputs, ...meta.outputs].find((x) => x.name === c.name);
      t.same(m?.shape.slice(1), c.dims, `${c.name}: metadata shape less the batch dim is the config's dims`);
      t.equal(`TYPE_${m?.datatype}`, c.data_type);
    }
    // Not batched (input1 has no dynamic dim 0): max_batch_size 0, full shapes, no dynamic_batching.
    const spec = ModelConfigSchema.parse((await get('/v2/models/mymodel/versions/1/config')).json());
    t.equal(spec.max_batch_size, 0);
    t.same(spec.input.map((i) => [i.name, i.data_type, i.dims]), [['input0', 'TYPE_FP32', [-1, 2]], ['input1', 'TYPE_BOOL', [3]]]);
    t.notOk('dynamic_batching' in spec);
    v2Error(t, await get('/v2/models/mymodel/versions/2/config'), 404, 'MODEL_NOT_FOUND');
    v2Error(t, await get('/v2/models/nosuch/config'), 404, 'MODEL_NOT_FOUND');
  });

  t.test('gzip and deflate requests; answers compressed when Accept-Encoding asks', async (t) => {
    for (const [coding, body] of [['gzip', gzipSync(ADD)], ['deflate', deflateSync(ADD)]] as const) {
      const res = await infer(body, { 'content-encoding': coding });
      t.equal(res.statusCode, 200, `${coding} request: ${res.statusCode === 200 ? '' : res.body}`);
      t.same(readResponse(res.rawPayload, undefined).json.outputs[0]?.data, [2, 3, 4, 5]);
    }
    const gz = await infer(ADD, { 'accept-encoding': 'gzip' });
    t.equal(gz.headers['content-encoding'], 'gzip');
    t.same(readResponse(gunzipSync(gz.rawPayload), undefined).json.outputs[0]?.data, [2, 3, 4, 5]);
    const df = await infer(ADD, { 'accept-encoding': 'deflate;q=0.5, br' });
    t.equal(df.headers['content-encoding'], 'deflate');
    t.same(readResponse(inflateSync(df.rawPayload), undefined).json.outputs[0]?.data, [2, 3, 4, 5]);
    // Binary answers: the header length is that of the decompressed answer, as Triton's client reads it.
    const bin = await infer(JSON.stringify({ ...JSON.parse(ADD), parameters: { binary_data_output: true } }), { 'accept-encoding': 'gzip' });
    const plain = gunzipSync(bin.rawPayload);
    const { binary } = readResponse(plain, bin.headers['inference-header-content-length']);
    t.same([...new Float32Array(new Uint8Array(binary.get('C') as Buffer).buffer)], [2, 3, 4, 5]);
    t.notOk((await infer(ADD, { 'accept-encoding': 'gzip;q=0, identity' })).headers['content-encoding'], 'q=0 is a refusal');

    v2Error(t, await infer(Buffer.from('not gzip'), { 'content-encoding': 'gzip' }), 400, 'INVALID_REQUEST');
    v2Error(t, await infer(ADD, { 'content-encoding': 'br' }), 415, 'UNSUPPORTED_CONTENT_ENCODING');
    // 64 MiB of zeros in about 64 KiB: within the limit compressed, far over it decompressed.
    const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024), { level: 9 });
    t.ok(bomb.length < 256 * 1024);
    const message = v2Error(t, await infer(bomb, { 'content-encoding': 'gzip' }), 413, 'BODY_TOO_LARGE');
    t.match(message, /decompresses to more than the limit of 262144 bytes/);
    t.equal((await infer(ADD)).statusCode, 200, 'still serving');
  });

  t.test('BYTES is refused under any name the model does not take images in', async (t) => {
    const bytes = JSON.stringify({ inputs: [{ name: 'A', shape: [1], datatype: 'BYTES', data: ['x'] }] });
    t.match(v2Error(t, await infer(bytes), 400, 'INVALID_REQUEST'), /takes raw tensors, not BYTES/);
  });
});

t.test('the gzip stage stops inflating once past the limit (a bomb is never inflated whole)', async (t) => {
  // Eight gzip members of 32 MiB of zeros each (a gzip stream may hold several): 256 MiB in about 256 KiB.
  const member = gzipSync(Buffer.alloc(32 * 1024 * 1024), { level: 9 });
  const bomb = Buffer.concat(Array.from({ length: 8 }, () => member));
  const chunks: Buffer[] = [];
  for (let i = 0; i < bomb.length; i += 1024) chunks.push(bomb.subarray(i, i + 1024));
  let read = 0;
  const source = Readable.from(
    (function* () {
      for (const c of chunks) {
        read++;
        yield c;
      }
    })(),
  );
  const body = decompressBody(source, 'gzip', 256 * 1024);
  let out = 0;
  const err = await new Promise<unknown>((resolve) => {
    body.on('data', (c: Buffer) => (out += c.length));
    body.on('error', resolve);
    body.on('end', () => resolve(undefined));
  });
  t.ok(err instanceof OcularError && err.code === 'BODY_TOO_LARGE', 'BODY_TOO_LARGE');
  t.ok(out <= 256 * 1024, `at most the limit came out (${out} bytes)`);
  t.ok(read < chunks.length / 2, `inflating stopped early: ${read} of ${chunks.length} compressed chunks read`);
});

t.test('Accept-Encoding negotiation', async (t) => {
  t.equal(responseCoding(undefined), undefined);
  t.equal(responseCoding('gzip'), 'gzip');
  t.equal(responseCoding('deflate, gzip'), 'gzip', 'gzip at equal q');
  t.equal(responseCoding('gzip;q=0.2, deflate;q=0.8'), 'deflate');
  t.equal(responseCoding('br, identity'), undefined);
  t.equal(responseCoding('gzip;q=0'), undefined);
});

t.test('classification flattens the non-batch dimensions per batch row, as Triton', async (t) => {
  // [1, 3, 2]: one row of six scores; indices run over the flattened row.
  const one = classify('scores', new Float32Array([0.1, 0.9, 0.8, 0.2, 0.3, 0.95]), [1, 3, 2], 2, undefined, true);
  t.same(one.shape, [1, 2]);
  t.same((one.data as Buffer[]).map(String).map((s) => s.split(':')[1]), ['5', '1']);
  // [2, 2, 2]: per row.
  const two = classify('scores', new Float32Array([1, 2, 3, 4, 8, 7, 6, 5]), [2, 2, 2], 1, undefined, true);
  t.same(two.shape, [2, 1]);
  t.same((two.data as Buffer[]).map(String).map((s) => s.split(':')[1]), ['3', '0']);
  // Without a batch dimension the whole output is one row: [k].
  const flat = classify('scores', new Float32Array([1, 5, 3, 4]), [2, 2], 1, undefined, false);
  t.same(flat.shape, [1]);
  t.same((flat.data as Buffer[]).map(String), ['5:1']);
});

t.test('image models: the BYTES input in metadata and config; ultraface classification per row', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', 'models/ultraface-rfb-320/model.onnx', 'images/cat_chelsea.png'), async (t) => {
  const manifestPath = writeSubsetManifest(t.testdir(), ['mobilenetv2', 'ultraface']);
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const meta = ModelMetadataSchema.parse((await app.inject({ method: 'GET', url: '/v2/models/mobilenetv2' })).json());
  t.same(meta.inputs.at(-1), { name: 'image', datatype: 'BYTES', shape: [-1], parameters: { encoded_images: true, optional: true } }, 'metadata lists the image input, optional');
  const config = ModelConfigSchema.parse((await app.inject({ method: 'GET', url: '/v2/models/mobilenetv2/config' })).json());
  t.same(config.input.at(-1), { name: 'image', data_type: 'TYPE_STRING', dims: [1], reshape: { shape: [] }, optional: true }, 'config: optional, one per batch row');
  t.same(config.input[0], { name: 'input', data_type: 'TYPE_FP32', dims: [3, 224, 224] });

  const cat = readFileSync(imagePath('cat_chelsea.png'));
  const send = (model: string, name: string, outputs: unknown[] = []) => {
    const header = Buffer.from(JSON.stringify({ inputs: [{ name, shape: [1], datatype: 'BYTES', parameters: { binary_data_size: bytesElements([cat]).length } }], outputs }));
    return app.inject({
      method: 'POST',
      url: `/v2/models/${model}/infer`,
      headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
      payload: Buffer.concat([header, bytesElements([cat])]),
    });
  };
  t.equal((await send('mobilenetv2', 'image')).statusCode, 200, 'the image input by its name');
  t.match(v2Error(t, await send('mobilenetv2', 'input'), 400, 'INVALID_REQUEST'), /encoded images go in input "image"/);
  t.match(v2Error(t, await send('mobilenetv2', 'photo'), 400, 'INVALID_REQUEST'), /encoded images go in input "image"/);

  // ultraface's scores are [1, 4420, 2]: Triton flattens the row, so k strings per image, not per anchor.
  const res = await send('ultraface', 'image', [{ name: 'scores', parameters: { classification: 3 } }]);
  t.equal(res.statusCode, 200, res.statusCode === 200 ? '' : res.body);
  const out = readResponse(res.rawPayload, res.headers['inference-header-content-length']).json.outputs[0];
  t.same(out?.shape, [1, 3]);
  t.ok((out?.data as string[]).every((s) => Number(s.split(':')[1]) < 8840), 'indices over the flattened 4420 x 2 row');
});
