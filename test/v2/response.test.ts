/**
 * The v2 inference answer (protocols/oip/response.ts) has the shape InferenceResponseSchema declares, as JSON and
 * as the binary extension's header, with 64-bit integers written digit for digit: the writer on its own (a pure
 * function of plain data) and real answers of /v2 infer.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { InferenceResponseSchema } from '../../src/protocols/oip/schemas.js';
import { writeInferResponse, type InferResponseInput } from '../../src/protocols/oip/response.js';
import { binaryRequest, encodeModel, sha256 } from './helpers.js';

const INT64 = 7;
/** Beyond 2^53, where a double cannot hold them. */
const HUGE = [2n ** 62n + 3n, -(2n ** 63n), 2n ** 63n - 1n];

const base: InferResponseInput = {
  modelName: 'm',
  modelVersion: '3',
  outputs: [],
  outputParameters: [],
  binaryOutputs: [],
  binaryAll: false,
};

const outputs: InferResponseInput['outputs'] = [
  { name: 'f', datatype: 'FP32', shape: [2], data: new Float32Array([0.5, -1.25]) },
  { name: 'i', datatype: 'INT64', shape: [3], data: new BigInt64Array(HUGE) },
  { name: 'b', datatype: 'BOOL', shape: [2], data: new Uint8Array([1, 0]) },
  { name: 's', datatype: 'BYTES', shape: [1], data: [Buffer.from('7:1:cat "tabby"')] },
];

t.test('a JSON answer has the response schema, every datatype written, INT64 beyond 2^53 exact', async (t) => {
  const answer = writeInferResponse({ ...base, id: 'req-1', outputs, outputParameters: [{}, {}, { k: 1 }, {}], binaryOutputs: [undefined, false] });
  if (answer.type !== 'json') throw new Error('expected a JSON answer');
  const json = InferenceResponseSchema.parse(JSON.parse(answer.body));
  t.same(
    { model_name: json.model_name, model_version: json.model_version, id: json.id },
    { model_name: 'm', model_version: '3', id: 'req-1' },
  );
  t.same(json.outputs.map((o) => [o.name, o.datatype, o.shape]), outputs.map((o) => [o.name, o.datatype, o.shape]));
  t.same(json.outputs[0]?.data, [0.5, -1.25]);
  t.same(json.outputs[2]?.data, [true, false]);
  t.same(json.outputs[2]?.parameters, { k: 1 }, 'response parameters kept');
  t.notOk('parameters' in (json.outputs[0] ?? {}), 'no empty parameters');
  t.same(json.outputs[3]?.data, ['7:1:cat "tabby"'], 'BYTES as strings, escaped');
  t.ok(answer.body.includes(`"data":[${HUGE.join(',')}]`), 'INT64 written with every digit');
});

t.test('binary outputs: a header of the response schema, then each binary output in order', async (t) => {
  const answer = writeInferResponse({ ...base, outputs, outputParameters: [{}, {}, {}, {}], binaryOutputs: [undefined, undefined, false], binaryAll: true });
  if (answer.type !== 'binary') throw new Error('expected a binary answer');
  const json = InferenceResponseSchema.parse(JSON.parse(answer.body.subarray(0, answer.headerLength).toString('utf8')));
  t.same(json.outputs.map((o) => o.data === undefined), [true, true, false, true], 'BOOL asked for as JSON, the others binary');
  const sizes = json.outputs.map((o) => o.parameters?.['binary_data_size']);
  t.same(sizes, [8, 24, undefined, 4 + 15]);
  let at = answer.headerLength;
  const chunk = (n: number) => answer.body.subarray(at, (at += n));
  t.same([...new Float32Array(new Uint8Array(chunk(8)).buffer)], [0.5, -1.25]);
  t.same([...new BigInt64Array(new Uint8Array(chunk(24)).buffer)], HUGE, 'INT64 bytes exact');
  const s = chunk(19);
  t.equal(s.readUInt32LE(0), 15);
  t.equal(s.subarray(4).toString('utf8'), '7:1:cat "tabby"');
  t.equal(at, answer.body.length, 'nothing after the last output');
});

t.test('no outputs: an empty outputs array; the answer is plain data that survives structured cloning', async (t) => {
  const answer = writeInferResponse(base);
  t.same(InferenceResponseSchema.parse(JSON.parse(answer.body as string)), { model_name: 'm', model_version: '3', outputs: [] });
  const cloned = structuredClone({ ...base, outputs, outputParameters: [{}, {}, {}, {}] });
  t.same(writeInferResponse(cloned), writeInferResponse({ ...base, outputs, outputParameters: [{}, {}, {}, {}] }), 'same answer from a clone');
});

t.test('real /v2 answers validate against the response schema, INT64 beyond 2^53 exact', async (t) => {
  const dir = t.testdir();
  const model = encodeModel([{ opType: 'Identity', input: ['x'], output: ['y'] }], [['x', INT64, ['N', 3]]], [['y', INT64, ['N', 3]]]);
  writeFileSync(join(dir, 'id64.onnx'), model);
  const manifestPath = join(dir, 'manifest.json');
  writeFileSync(
    manifestPath,
    JSON.stringify({ models: [{ name: 'id64', version: '1', task: 'tensor', source: 'id64.onnx', sha256: sha256(model), warmupShapes: { x: [1, 3] } }] }),
  );
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const bytes = Buffer.from(new BigInt64Array(HUGE).buffer);
  const infer = async (extra: Record<string, unknown>) => {
    const { body, headers } = binaryRequest([{ name: 'x', datatype: 'INT64', shape: [1, 3], bytes }], extra);
    const res = await app.inject({ method: 'POST', url: '/v2/models/id64/infer', headers, payload: body });
    t.equal(res.statusCode, 200, `status of ${JSON.stringify(extra)}`);
    return res;
  };

  const json = await infer({ id: 'q' });
  t.match(json.headers['content-type'], /^application\/json/);
  const parsed = InferenceResponseSchema.parse(JSON.parse(json.body));
  t.same([parsed.model_name, parsed.model_version, parsed.id, parsed.outputs[0]?.shape], ['id64', '1', 'q', [1, 3]]);
  t.ok(json.body.includes(`"data":[${HUGE.join(',')}]`), 'JSON carries every digit');

  const binary = await infer({ parameters: { binary_data_output: true } });
  t.match(binary.headers['content-type'], /^application\/octet-stream/);
  const n = Number(binary.headers['inference-header-content-length']);
  const header = InferenceResponseSchema.parse(JSON.parse(binary.rawPayload.subarray(0, n).toString('utf8')));
  t.equal(header.outputs[0]?.parameters?.['binary_data_size'], 24);
  t.same([...new BigInt64Array(new Uint8Array(binary.rawPayload.subarray(n)).buffer)], HUGE, 'binary carries every bit');
});
