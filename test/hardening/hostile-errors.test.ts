/**
 * Errors that cannot fail (issue 18, item 6): every error path formats the client's values safely, cut short and
 * never walked recursively, so no malformed body is a 500. Hostile values (a value nested 100,000 deep, a 1 MB
 * string, a 1 MB key, a shape of a million dimensions) are put in every field of a v2 inference request, and in
 * the /v1 query and the v2 repository API: each is answered 400 with a short message, the event loop of this
 * process (which hosts the server) is never blocked 100 ms, and /healthz and a normal request answer meanwhile.
 */
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { send, type HttpAnswer } from '../helpers/hostile.js';
import { describeBlock, MAX_LOOP_BLOCK_MS, measureLoopBlock } from '../helpers/loop-block.js';
import { ErrorBodySchema, MAX_MESSAGE_CHARS, V2ErrorSchema, describeValue, issuesText } from '../../src/errors.js';
import { writeTinyManifest } from '../v2/helpers.js';

const DEPTH = 100_000;
const HUGE = 1_000_000;
const JSON_HEADERS = { 'content-type': 'application/json' };

/** JSON text of a value nested `depth` deep: `{"x":[[[...]]]}` (built as text: JSON.stringify would overflow). */
const deepArray = (depth: number, inner = '1'): string => '['.repeat(depth) + inner + ']'.repeat(depth);
const deepObject = (depth: number): string => '{"x":'.repeat(depth) + '1' + '}'.repeat(depth);

/** Hostile JSON values, as text. */
const VALUES: Record<string, string> = {
  'an array nested 100,000 deep': deepArray(DEPTH),
  'an object nested 100,000 deep': deepObject(DEPTH),
  'an object holding an array nested 100,000 deep': `{"x":${deepArray(DEPTH)}}`,
  // Under the 64 KB past which bodies are parsed in the worker: the issue's 500 was on the main thread.
  'an object holding an array nested 20,000 deep': `{"x":${deepArray(20_000)}}`,
  'a string of a million characters': JSON.stringify('x'.repeat(HUGE)),
  'an array of a million numbers': `[${Array.from({ length: HUGE }, () => '7').join(',')}]`,
};

/** A valid request to `add`, with one field replaced by `value` (JSON text). */
const FIELDS: Record<string, (value: string) => string> = {
  'id': (v) => `{"id":${v},"inputs":[${A},${B}]}`,
  'parameters': (v) => `{"parameters":${v},"inputs":[${A},${B}]}`,
  'a parameter': (v) => `{"parameters":{"p":${v}},"inputs":[${A},${B}]}`,
  'a parameter\'s key': (v) => `{"parameters":{${asKey(v)}:1},"inputs":[${A},${B}]}`,
  'inputs': (v) => `{"inputs":${v}}`,
  'an input': (v) => `{"inputs":[${v},${B}]}`,
  'an input\'s name': (v) => `{"inputs":[{"name":${v},"shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},${B}]}`,
  'an input\'s shape': (v) => `{"inputs":[{"name":"A","shape":${v},"datatype":"FP32","data":[1,2,3,4]},${B}]}`,
  'an input\'s datatype': (v) => `{"inputs":[{"name":"A","shape":[1,4],"datatype":${v},"data":[1,2,3,4]},${B}]}`,
  'an input\'s data': (v) => `{"inputs":[{"name":"A","shape":[1,4],"datatype":"FP32","data":${v}},${B}]}`,
  'an element of FP32 data': (v) => `{"inputs":[{"name":"A","shape":[1,4],"datatype":"FP32","data":[1,2,3,${v}]},${B}]}`,
  'an element of INT64 data': (v) => `{"inputs":[{"name":"A","shape":[1,4],"datatype":"INT64","data":[1,2,${v},4],"parameters":{"convert_datatype":true}},${B}]}`,
  'an element of BOOL data': (v) => `{"inputs":[{"name":"A","shape":[1,4],"datatype":"BOOL","data":[${v},true,true,true],"parameters":{"convert_datatype":true}},${B}]}`,
  'an element of BYTES data': (v) => `{"inputs":[{"name":"A","shape":[1],"datatype":"BYTES","data":[${v}]}]}`,
  'an input\'s parameters': (v) => `{"inputs":[{"name":"A","shape":[1,4],"datatype":"FP32","data":[1,2,3,4],"parameters":${v}},${B}]}`,
  'outputs': (v) => `{"inputs":[${A},${B}],"outputs":${v}}`,
  'an output\'s name': (v) => `{"inputs":[${A},${B}],"outputs":[{"name":${v}}]}`,
  'an output\'s parameters': (v) => `{"inputs":[${A},${B}],"outputs":[{"name":"C","parameters":{"classification":${v}}}]}`,
};
/**
 * Combinations that are valid requests: parameters are free-form, a string value or any key of any length the
 * body allows (a hostile value as a key is its text).
 */
const isLegal = (valueName: string, field: string): boolean =>
  field === "a parameter's key" || (field === 'a parameter' && valueName === 'a string of a million characters');
const A = '{"name":"A","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}';
const B = '{"name":"B","shape":[1,4],"datatype":"FP32","data":[1,1,1,1]}';
/** A value as an object key: strings as they are, anything else as its text in a string. */
const asKey = (v: string): string => (v.startsWith('"') ? v : JSON.stringify(v));

t.test('describeValue and issuesText never walk a value and stay short', async (t) => {
  let deep: unknown = 1;
  for (let i = 0; i < DEPTH; i++) deep = { x: [deep] };
  t.equal(describeValue(deep), 'an object');
  t.equal(describeValue([deep, deep]), 'an array of 2');
  t.equal(describeValue('x'.repeat(HUGE)).length <= 48 + 40, true, 'a long string is cut');
  t.equal(describeValue(12.5), '12.5');
  t.equal(describeValue(null), 'null');
  t.equal(describeValue(undefined), 'undefined');
  t.equal(describeValue(10n ** 100n).length <= 48 + 40, true, 'a long bigint is cut');
  const issues = [{ code: 'custom' as const, path: ['k'.repeat(HUGE)], message: 'm'.repeat(HUGE), input: undefined }];
  t.ok(issuesText(issues).length < 400, 'a huge key and message are cut');
});

t.test('hostile values in every field are answered 400 with a short message, never 500', async (t) => {
  // Every field's hostile body is sent at once: the parse queue holds them all (its own bound is tested in bodies.test.ts).
  const { app } = await buildTestApp(t, {
    manifestPath: writeTinyManifest(t.testdir()),
    config: { device: 'cpu', manifestWatchMs: 0, logLevel: 'warn', parseQueueSize: 256 },
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as AddressInfo).port;
  const normal = Buffer.from(`{"inputs":[${A},${B}]}`);
  const infer = (body: Buffer) => send(port, { path: '/v2/models/add/infer', body, headers: JSON_HEADERS });
  // Warm: the first request down each path compiles it (small values in every field, on the main thread and in
  // the parser worker); the bound is on what a hostile request costs.
  const padding = ' '.repeat(70 * 1024);
  for (const small of [deepArray(50), deepObject(50), '"xx"', '[7,7]']) {
    for (const place of Object.values(FIELDS)) {
      await Promise.all([infer(Buffer.from(place(small))), infer(Buffer.from(place(small) + padding)), infer(normal), send(port, { path: '/healthz' })]);
    }
  }

  for (const [valueName, value] of Object.entries(VALUES)) {
    // Bodies built before the measure, so that the test's own allocations are not in it; the value in every field
    // at once, with /healthz and a normal request beside them.
    const bodies = Object.entries(FIELDS).map(([field, place]) => [field, Buffer.from(place(value))] as const);
    const { value: answers, ...block } = await measureLoopBlock(() =>
      Promise.all([send(port, { path: '/healthz' }), infer(normal), ...bodies.map(([, body]) => infer(body))]),
    );
    const [health, answered, ...hostile] = answers;
    t.ok(block.maxBlockMs < MAX_LOOP_BLOCK_MS, `${valueName} in every field: event loop blocked at most ${describeBlock(block)}`);
    t.equal(health?.status, 200, `${valueName}: /healthz answered meanwhile`);
    t.equal(answered?.status, 200, `${valueName}: a normal request answered meanwhile`);
    bodies.forEach(([field], i) => {
      const res = hostile[i] as HttpAnswer;
      const what = `${valueName} as ${field}`;
      if (isLegal(valueName, field)) {
        // A free-form parameter may be long: the request is valid and answered.
        t.equal(res.status, 200, `${what}: a valid request, 200`);
        return;
      }
      const parsed = V2ErrorSchema.safeParse(JSON.parse(res.body));
      if (res.status !== 400 || !parsed.success || res.body.length > MAX_MESSAGE_CHARS + 64) {
        t.fail(`${what}: ${res.status} ${res.body.slice(0, 300)} (${res.body.length} bytes)`);
      } else {
        t.pass(`${what}: 400 ${parsed.data.code} "${parsed.data.error.slice(0, 120)}"`);
      }
    });
  }
});

t.test('hostile values in the /v1 query and the v2 repository API are answered 400 with a short message', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0, logLevel: 'warn' } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as AddressInfo).port;

  // An 8 KB unknown query key (within Node's header limit): the validation message would quote it whole.
  const query = await send(port, { method: 'POST', path: `/v1/models/add/predict?${'k'.repeat(8000)}=1`, body: Buffer.from('x'), headers: { 'content-type': 'image/png' } });
  t.equal(query.status, 400, `an 8 KB query key: 400 (${query.body.slice(0, 200)})`);
  t.ok(query.body.length <= MAX_MESSAGE_CHARS + 64, `a short message (${query.body.length} bytes)`);
  ErrorBodySchema.parse(JSON.parse(query.body));

  // The repository API's bodies are small (64 KB): a 60 KB key and a value nested 30,000 deep.
  for (const [what, body] of [
    ['a 60 KB key', `{${JSON.stringify('k'.repeat(60_000))}:1}`],
    ['a value nested 30,000 deep', `{"ready":${deepArray(30_000)}}`],
    ['an object nested 10,000 deep', deepObject(10_000)],
  ] as const) {
    const res = await send(port, { path: '/v2/repository/index', body: Buffer.from(body), headers: JSON_HEADERS });
    t.equal(res.status, 400, `repository index, ${what}: 400 (${res.body.slice(0, 200)})`);
    t.ok(res.body.length <= MAX_MESSAGE_CHARS + 64, `a short message (${res.body.length} bytes)`);
    t.equal(V2ErrorSchema.parse(JSON.parse(res.body)).code, 'INVALID_REQUEST');
  }
});
