/**
 * Outputs keep their exact type end to end: an INT64 output above 2^24 (and above 2^53), INT32 values float32
 * cannot hold, UINT8 and BOOL come back bit-exact over JSON and over the binary tensor data extension, batched
 * or not.
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildTestApp } from '../helpers/app.js';
import { BOOL, binaryRequest, encodeModel, readResponse, sha256 } from './helpers.js';

const INT64 = 7;
const INT32 = 6;
const UINT8 = 2;

/** o64 = Identity(i64) INT64, o32 = Identity(i32) INT32, ou8 = Identity(u8) UINT8, ob = Not(b) BOOL; all [N, 3]. */
function exactModel(): Buffer {
  return encodeModel(
    [
      { opType: 'Identity', input: ['i64'], output: ['o64'] },
      { opType: 'Identity', input: ['i32'], output: ['o32'] },
      { opType: 'Identity', input: ['u8'], output: ['ou8'] },
      { opType: 'Not', input: ['b'], output: ['ob'] },
    ],
    [
      ['i64', INT64, ['N', 3]],
      ['i32', INT32, ['N', 3]],
      ['u8', UINT8, ['N', 3]],
      ['b', BOOL, ['N', 3]],
    ],
    [
      ['o64', INT64, ['N', 3]],
      ['o32', INT32, ['N', 3]],
      ['ou8', UINT8, ['N', 3]],
      ['ob', BOOL, ['N', 3]],
    ],
  );
}

const BIG = [2n ** 40n + 1n, -(2n ** 33n) + 7n, 2n ** 53n - 1n];
/** Beyond 2^53: only the binary extension can carry them in; JSON carries them out as exact digits. */
const HUGE = [2n ** 62n + 3n, -(2n ** 63n), 2n ** 63n - 1n];
const I32 = [2147483647, -2147483648, 16777217];
const U8 = [0, 255, 7];

t.test('non-float32 outputs keep their exact type over /v2 infer', async (t) => {
  const dir = t.testdir();
  const model = exactModel();
  writeFileSync(join(dir, 'exact.onnx'), model);
  const manifestPath = join(dir, 'manifest.json');
  const warmupShapes = { i64: [1, 3], i32: [1, 3], u8: [1, 3], b: [1, 3] };
  writeFileSync(
    manifestPath,
    JSON.stringify({
      models: [
        { name: 'exact', version: '1', task: 'tensor', source: 'exact.onnx', sha256: sha256(model), warmupShapes, batching: { maxBatchSize: 8, maxQueueDelayMs: 20, maxQueueSize: 64 } },
      ],
    }),
  );
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const infer = (body: Buffer | string, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
    app.inject({ method: 'POST', url: '/v2/models/exact/infer', headers, payload: body });
  const jsonInputs = (i64: bigint[], i32: number[], u8: number[], b: boolean[]) => [
    { name: 'i64', datatype: 'INT64', shape: [1, 3], data: i64.map(Number) },
    { name: 'i32', datatype: 'INT32', shape: [1, 3], data: i32 },
    { name: 'u8', datatype: 'UINT8', shape: [1, 3], data: u8 },
    { name: 'b', datatype: 'BOOL', shape: [1, 3], data: b },
  ];

  t.test('metadata names the exact datatypes', async (t) => {
    const meta = (await app.inject({ method: 'GET', url: '/v2/models/exact' })).json<{ outputs: { name: string; datatype: string }[] }>();
    t.same(meta.outputs.map((o) => o.datatype), ['INT64', 'INT32', 'UINT8', 'BOOL']);
  });

  t.test('JSON in, JSON out: INT64 2^40+1 and -(2^33)+7, INT32 2^24+1, UINT8 255, BOOL exact', async (t) => {
    const res = await infer(JSON.stringify({ inputs: jsonInputs(BIG, I32, U8, [true, false, true]) }));
    t.equal(res.statusCode, 200, res.body.slice(0, 300));
    const { json } = readResponse(res.rawPayload, undefined);
    const out = new Map(json.outputs.map((o) => [o.name, o]));
    t.same(out.get('o64')?.datatype, 'INT64');
    t.same(out.get('o64')?.data, BIG.map(Number), 'int64 values exact (safe integers, JSON numbers)');
    t.same(out.get('o32')?.datatype, 'INT32');
    t.same(out.get('o32')?.data, I32, 'int32 values exact (16777217 does not survive float32)');
    t.same(out.get('ou8')?.datatype, 'UINT8');
    t.same(out.get('ou8')?.data, U8);
    t.same(out.get('ob')?.datatype, 'BOOL');
    t.same(out.get('ob')?.data, [false, true, false]);
  });

  t.test('binary in, binary out: every byte as the model wrote it, little-endian', async (t) => {
    const { body, headers } = binaryRequest(
      [
        { name: 'i64', datatype: 'INT64', shape: [1, 3], bytes: Buffer.from(new BigInt64Array(HUGE).buffer) },
        { name: 'i32', datatype: 'INT32', shape: [1, 3], bytes: Buffer.from(new Int32Array(I32).buffer) },
        { name: 'u8', datatype: 'UINT8', shape: [1, 3], bytes: Buffer.from(U8) },
        { name: 'b', datatype: 'BOOL', shape: [1, 3], bytes: Buffer.from([0, 1, 0]) },
      ],
      { parameters: { binary_data_output: true } },
    );
    const res = await infer(body, headers);
    t.equal(res.statusCode, 200, res.statusCode === 200 ? '' : res.body);
    const { json, binary } = readResponse(res.rawPayload, res.headers['inference-header-content-length']);
    t.same(json.outputs.map((o) => o.datatype), ['INT64', 'INT32', 'UINT8', 'BOOL']);
    const o64 = binary.get('o64') as Buffer;
    t.equal(o64.length, 24);
    t.same([0, 1, 2].map((i) => o64.readBigInt64LE(i * 8)), HUGE, 'int64 beyond 2^53 exact');
    const o32 = binary.get('o32') as Buffer;
    t.same([0, 1, 2].map((i) => o32.readInt32LE(i * 4)), I32);
    t.same([...(binary.get('ou8') as Buffer)], U8);
    t.same([...(binary.get('ob') as Buffer)], [1, 0, 1]);
  });

  t.test('INT64 beyond 2^53 over JSON: JSON numbers with every digit (as Triton writes them)', async (t) => {
    const { body, headers } = binaryRequest([
      { name: 'i64', datatype: 'INT64', shape: [1, 3], bytes: Buffer.from(new BigInt64Array(HUGE).buffer) },
      { name: 'i32', datatype: 'INT32', shape: [1, 3], bytes: Buffer.from(new Int32Array(I32).buffer) },
      { name: 'u8', datatype: 'UINT8', shape: [1, 3], bytes: Buffer.from(U8) },
      { name: 'b', datatype: 'BOOL', shape: [1, 3], bytes: Buffer.from([0, 1, 0]) },
    ]);
    const res = await infer(body, headers);
    t.equal(res.statusCode, 200, res.statusCode === 200 ? '' : res.body);
    t.match(res.headers['content-type'], /application\/json/);
    t.ok(res.body.includes(`"data":[${HUGE.join(',')}]`), `the digits are exact: ${res.body.slice(0, 300)}`);
    t.doesNotThrow(() => readResponse(res.rawPayload, undefined), 'still valid JSON, valid per the response schema');
  });

  t.test('batched one-row requests each get their own exact rows', async (t) => {
    const rows = Array.from({ length: 6 }, (_, i) => BigInt(i) * 2n ** 41n + BigInt(i) + 1n);
    const answers = await Promise.all(
      rows.map((r, i) => infer(JSON.stringify({ inputs: jsonInputs([r, -r, BigInt(i)], [i + 16777217, -i, i], [i, 255 - i, 1], [i % 2 === 0, true, false]) }))),
    );
    answers.forEach((res, i) => {
      const r = rows[i] as bigint;
      const out = new Map(readResponse(res.rawPayload, undefined).json.outputs.map((o) => [o.name, o.data]));
      t.same(out.get('o64'), [Number(r), -Number(r), i], `request ${i}: int64 exact`);
      t.same(out.get('o32'), [i + 16777217, -i, i], `request ${i}: int32 exact`);
      t.same(out.get('ou8'), [i, 255 - i, 1]);
      t.same(out.get('ob'), [i % 2 !== 0, false, true]);
    });
  });
});
