/**
 * Model control and readiness (issue #19), in process, on tiny generated models: under OCULAR_MODEL_CONTROL=none
 * the repository API refuses load and unload; under `explicit` it loads and unloads, with API keys only for admin
 * keys, each action logged with the key's id and never the key; Triton's load overrides are refused by name;
 * readiness counts every model of the manifest, bar those an operator unloaded on purpose, and then only while
 * something is served; answers to callers without an admin key carry no absolute path.
 */
import { writeFileSync } from 'node:fs';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { V2ErrorSchema, publicText } from '../../src/errors.js';
import type { ModelDescription } from '../../src/core/model-handle.js';
import { describeFor } from '../../src/routes/models.js';
import { ReadinessSchema } from '../../src/routes/schemas.js';
import { writeTinyManifest } from './helpers.js';

const ADD = JSON.stringify({ inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] }] });
const INFERENCE_KEY = 'inference-key-0123456789';
const ADMIN_KEY = 'admin-key-0123456789abcdef';
const OTHER_ADMIN_KEY = 'admin-file-key-0123456789';

type App = Awaited<ReturnType<typeof buildTestApp>>['app'];
const post = (app: App, url: string, payload?: string, key?: string) =>
  app.inject({
    method: 'POST',
    url,
    headers: { 'content-type': 'application/json', ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}) },
    ...(payload !== undefined ? { payload } : {}),
  });
const v2Error = (t: Test, res: { statusCode: number; json: () => unknown }, status: number, code: string): string => {
  t.equal(res.statusCode, status, `status ${status}`);
  const body = V2ErrorSchema.parse(res.json());
  t.equal(body.code, code, `code ${code}: ${body.error}`);
  return body.error;
};

t.test('model control none (the default): load and unload are refused with 403 naming the option', async (t) => {
  const { app, config } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0 } });
  t.equal(config.modelControl, 'none', 'none is the default');
  for (const action of ['load', 'unload']) {
    const message = v2Error(t, await post(app, `/v2/repository/models/add/${action}`, '{}'), 403, 'MODEL_CONTROL_DISABLED');
    t.match(message, /OCULAR_MODEL_CONTROL/, `${action}: the message names the option`);
  }
  t.equal((await post(app, '/v2/models/add/infer', ADD)).statusCode, 200, 'the model is still served');
  t.equal((await post(app, '/v2/repository/index', '{}')).statusCode, 200, 'the index still answers');
  t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
  // The host's own reload path is not the repository API: the manifest reload still applies.
  const report = await app.ocular.models.reloadManifest();
  t.same(report.unchanged.sort(), ['add', 'mymodel']);
});

t.test('model control explicit with API keys: only admin keys load and unload, logged by key id', async (t) => {
  const dir = t.testdir();
  const keys = join(dir, 'keys');
  const adminKeys = join(dir, 'admin-keys');
  writeFileSync(keys, `# inference\n${INFERENCE_KEY}\nadmin ${ADMIN_KEY}\n`);
  writeFileSync(adminKeys, `${OTHER_ADMIN_KEY}\n`);
  const { app, logs } = await buildTestApp(t, {
    manifestPath: writeTinyManifest(dir),
    config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit', authKeysFile: keys, authAdminKeysFile: adminKeys },
  });
  t.equal((await post(app, '/v2/repository/models/add/unload', '{}')).statusCode, 401, 'no key: 401');
  const refused = v2Error(t, await post(app, '/v2/repository/models/add/unload', '{}', INFERENCE_KEY), 403, 'FORBIDDEN');
  t.match(refused, /admin key/);
  t.equal((await post(app, '/v2/models/add/infer', ADD, INFERENCE_KEY)).statusCode, 200, 'the inference key still infers, and add is served');

  t.equal((await post(app, '/v2/repository/models/add/unload', '{}', ADMIN_KEY)).statusCode, 200, 'an admin key marked in the keys file unloads');
  t.equal((await post(app, '/v2/models/add/infer', ADD, INFERENCE_KEY)).statusCode, 404);
  t.equal((await post(app, '/v2/repository/models/add/load', '{}', OTHER_ADMIN_KEY)).statusCode, 200, 'a key of the admin keys file loads');
  t.equal((await post(app, '/v2/models/add/infer', ADD, INFERENCE_KEY)).statusCode, 200);

  const actions = logs.lines.filter((l) => l['msg'] === 'repository action done' || l['msg'] === 'repository action refused');
  t.same(
    actions.map((l) => [l['action'], l['msg']]),
    [['unload', 'repository action refused'], ['unload', 'repository action done'], ['load', 'repository action done']],
  );
  for (const l of actions) t.match(String(l['caller']), /^key:[0-9a-f]{12}$/, 'logged with the key id');
  t.not(actions[1]?.['caller'], actions[2]?.['caller'], 'each key has its own id');
  const text = JSON.stringify(logs.lines);
  for (const key of [INFERENCE_KEY, ADMIN_KEY, OTHER_ADMIN_KEY]) t.notOk(text.includes(key), 'no key is ever logged');
});

t.test('load with overrides Ocular does not support is a 400 naming them', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit' } });
  // What Triton's client sends for load_model(name, config=..., files={'file:1/model.onnx': b'...'}).
  const message = v2Error(t, await post(app, '/v2/repository/models/add/load', JSON.stringify({ parameters: { config: '{"max_batch_size":4}', 'file:1/model.onnx': 'AAAA' } })), 400, 'INVALID_REQUEST');
  t.match(message, /"config".*"file:1\/model\.onnx"/);
  t.equal((await post(app, '/v2/models/add/infer', ADD)).statusCode, 200, 'nothing changed');
  // Triton's client sends unload_dependents with every unload: a boolean is accepted (Ocular has no ensembles).
  t.match(v2Error(t, await post(app, '/v2/repository/models/add/unload', '{"parameters":{"unload_dependents":"yes"}}'), 400, 'INVALID_REQUEST'), /"unload_dependents"/);
  t.equal((await post(app, '/v2/repository/models/add/unload', '{"parameters":{"unload_dependents":false}}')).statusCode, 200);
});

t.test('readiness tells the truth: failed models count, operator unloads are said and need something served', async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit' } });
  const readyz = async () => {
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    return { status: res.statusCode, body: ReadinessSchema.parse(res.json()) };
  };
  const v2Ready = async () => (await app.inject({ method: 'GET', url: '/v2/health/ready' })).statusCode;
  t.equal((await readyz()).status, 200);

  t.equal((await post(app, '/v2/repository/models/add/unload', '{}')).statusCode, 200);
  let r = await readyz();
  t.equal(r.status, 200, 'one model unloaded on purpose, another served: ready');
  t.same(r.body.models.find((m) => m.name === 'add'), { name: 'add', version: '1', state: 'UNAVAILABLE', reason: 'unloaded', unloadedOnPurpose: true }, '/readyz says so');
  t.equal(await v2Ready(), 200);

  t.equal((await post(app, '/v2/repository/models/mymodel/unload', '{}')).statusCode, 200);
  r = await readyz();
  t.equal(r.status, 503, 'every model unloaded: not ready');
  t.equal(r.body.status, 'not_ready');
  t.match(r.body.reason ?? '', /none is served/);
  t.equal(await v2Ready(), 400, 'v2 readiness agrees');

  t.equal((await post(app, '/v2/repository/models/add/load', '{}')).statusCode, 200);
  t.equal((await readyz()).status, 200, 'served again: ready');

  // A model of the manifest that fails to load keeps the server not ready, with the reason per model.
  writeTinyManifest(dir, (models) => {
    models.push({ name: 'broken', version: '1', task: 'tensor', source: join(dir, 'missing.onnx') });
  });
  await app.ocular.models.reloadManifest();
  r = await readyz();
  t.equal(r.status, 503);
  const broken = r.body.models.find((m) => m.name === 'broken');
  t.equal(broken?.state, 'UNAVAILABLE');
  t.ok((broken?.reason ?? '').length > 0, `the reason is given: ${broken?.reason}`);
  t.notOk((broken?.reason ?? '').includes(dir), 'without the absolute path');
  t.match(r.body.reason ?? '', /broken is UNAVAILABLE/);
  t.equal(await v2Ready(), 400);
});

t.test('no absolute path to a caller without an admin key; an admin key sees it', async (t) => {
  const dir = t.testdir();
  const keys = join(dir, 'keys');
  writeFileSync(keys, `${INFERENCE_KEY}\nadmin ${ADMIN_KEY}\n`);
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit', authKeysFile: keys } });
  const plain = v2Error(t, await post(app, '/v2/repository/models/nosuch/load', '{}', ADMIN_KEY), 404, 'MODEL_NOT_FOUND');
  t.ok(plain.includes(dir), 'the admin key is told the manifest path');
  writeTinyManifest(dir, (models) => {
    models.push({ name: 'broken', version: '1', task: 'tensor', source: join(dir, 'missing.onnx') });
  });
  await app.ocular.models.reloadManifest();
  for (const [url, method] of [['/readyz', 'GET'], ['/v1/models', 'GET'], ['/v2/repository/index', 'POST']] as const) {
    const asUser = await app.inject({ method, url, headers: { authorization: `Bearer ${INFERENCE_KEY}` } });
    t.notOk(asUser.body.includes(dir), `${url}: no absolute path for an inference key`);
    t.match(asUser.body, /missing\.onnx/, `${url}: the file is still named`);
    const asAdmin = await app.inject({ method, url, headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    t.ok(asAdmin.body.includes(dir), `${url}: the admin key gets the path`);
  }
});

t.test('publicText cuts paths to file names and drops native internals', async (t) => {
  t.equal(publicText('no model named "x" in the manifest /srv/ocular/models.manifest.json'), 'no model named "x" in the manifest models.manifest.json');
  t.equal(
    publicText('cuda: /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1539 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library libonnxruntime_providers_cuda.so'),
    'cuda: [ONNXRuntimeError] : 1 : FAIL : Failed to load library libonnxruntime_providers_cuda.so',
  );
  t.equal(publicText('cannot open file:///tmp/x/m.onnx'), 'cannot open m.onnx');
  t.equal(publicText('shape 1/2 and ratio a/b stay'), 'shape 1/2 and ratio a/b stay');
});

t.test('pipelining: the requests before a malformed one are answered, in order, before its 400', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit' } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const socket = connect(port, '127.0.0.1');
  const received: Buffer[] = [];
  socket.on('data', (c: Buffer) => received.push(c));
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.write(
    'POST /v2/repository/models/add/unload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}' +
      'GET /v2/repository/models/add/nosuch HTTP/1.1\r\nHost: x\r\n\r\n' +
      'GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n' +
      'GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
  );
  await closed;
  const text = Buffer.concat(received).toString('latin1');
  const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
  t.same(statuses, [200, 404, 200, 400], 'every request that ran is answered, then the 400');
  t.match(text, /"code":"INVALID_REQUEST"/);
  t.equal(app.ocular.models.get('add'), undefined, 'the unload that was answered took place');
});

t.test('/v1/models: a provider fallback names providers only, but to an admin key', async (t) => {
  const internals = 'cuda: /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1539 onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : libcublasLt.so.12: cannot open shared object file';
  const stage = { stage: 'main', provider: 'cpu', requestedProviders: ['cuda', 'cpu'], fallbackReason: internals } as unknown as ModelDescription['stages'][number];
  const d: ModelDescription = { name: 'm', version: '1', task: 'tensor', state: 'READY', reason: 'loading /srv/models/m.onnx failed', stages: [stage] };
  const user = describeFor({ caller: { id: 'key:000000000000', admin: false } }, d);
  t.equal(user.stages[0]?.fallbackReason, 'cuda could not be used; cpu serves (details in the server log)');
  t.equal(user.reason, 'loading m.onnx failed');
  t.equal(describeFor({ caller: null }, d).stages[0]?.fallbackReason, user.stages[0]?.fallbackReason, 'anonymous (auth off) is no admin');
  const admin = describeFor({ caller: { id: 'key:000000000001', admin: true } }, d);
  t.equal(admin.stages[0]?.fallbackReason, internals);
  t.equal(admin.reason, d.reason);
});
