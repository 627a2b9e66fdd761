/**
 * The model repository extension and per-model readiness, in process, on tiny generated models: index, unload
 * (requests then 404), load (back, same answers), a failed load (the old version keeps serving and the reason is
 * given), a changed manifest entry loaded as a new version, and the repository routes behind the API key.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { V2ErrorSchema } from '../../src/errors.js';
import { RepositoryIndexSchema } from '../../src/protocols/oip/schemas.js';
import { readResponse, writeTinyManifest } from './helpers.js';

const ADD = JSON.stringify({ inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] }] });

t.test('repository API: index, unload, load, failed load, new version', async (t) => {
  const dir = t.testdir();
  const manifestPath = writeTinyManifest(dir);
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit' } });
  const post = (url: string, payload?: string) => app.inject({ method: 'POST', url, ...(payload !== undefined ? { headers: { 'content-type': 'application/json' }, payload } : {}) });
  const infer = () => post('/v2/models/add/infer', ADD);
  const index = async () => RepositoryIndexSchema.parse((await post('/v2/repository/index', '{}')).json());

  t.same((await index()).map((m) => [m.name, m.state]), [['add', 'READY'], ['mymodel', 'READY']]);
  t.equal((await infer()).statusCode, 200);

  t.equal((await post('/v2/repository/models/add/unload')).statusCode, 200, 'unload');
  t.equal((await infer()).statusCode, 404, 'an unloaded model is not served');
  t.equal((await app.inject({ method: 'GET', url: '/v2/models/add/ready' })).statusCode, 404);
  t.same((await index()).find((m) => m.name === 'add'), { name: 'add', version: '1', state: 'UNAVAILABLE', reason: 'unloaded' });
  t.same((await post('/v2/repository/index', '{"ready":true}')).json<{ name: string }[]>().map((m) => m.name), ['mymodel']);
  t.equal((await app.inject({ method: 'GET', url: '/v2/health/ready' })).statusCode, 200, 'the server stays ready without the unloaded model');

  t.equal((await post('/v2/repository/models/add/load', '{}')).statusCode, 200, 'load');
  const back = await infer();
  t.equal(back.statusCode, 200);
  t.same(readResponse(back.rawPayload, undefined).json.outputs[0]?.data, [2, 3, 4, 5]);

  // A new version whose file does not match its sha256: the load fails and says why; version 1 keeps serving.
  writeTinyManifest(dir, (models) => {
    const add = models.find((m) => m['name'] === 'add') as Record<string, unknown>;
    add['version'] = '2';
    add['sha256'] = '0'.repeat(64);
  });
  const failed = await post('/v2/repository/models/add/load');
  t.equal(failed.statusCode, 400);
  const err = V2ErrorSchema.parse(failed.json());
  t.equal(err.code, 'MODEL_LOAD_FAILED');
  t.match(err.error, /sha256|hash|checksum/i, `says why: ${err.error}`);
  const still = await infer();
  t.equal(still.statusCode, 200, 'the old version still serves');
  t.equal(readResponse(still.rawPayload, undefined).json.model_version, '1');
  t.match((await index()).find((m) => m.name === 'add')?.reason ?? '', /version 2 failed, version 1 still serving/);

  // A good new version: loaded beside the old, switched, the old released.
  writeTinyManifest(dir, (models) => {
    (models.find((m) => m['name'] === 'add') as Record<string, unknown>)['version'] = '2';
  });
  const sessionsBefore = app.ocular.models.sessionCount;
  t.equal((await post('/v2/repository/models/add/load')).statusCode, 200);
  t.equal(readResponse((await infer()).rawPayload, undefined).json.model_version, '2', 'answers come from version 2');
  t.equal(app.ocular.models.sessionCount, sessionsBefore, 'the old version was released');
  t.equal((await app.inject({ method: 'GET', url: '/v2/models/add/versions/2/ready' })).statusCode, 200);
  t.equal((await app.inject({ method: 'GET', url: '/v2/models/add/versions/1/ready' })).statusCode, 404);

  t.equal((await post('/v2/repository/models/nosuch/load')).statusCode, 404);
  t.equal((await post('/v2/repository/models/nosuch/unload')).statusCode, 404);
  t.equal((await post('/v2/repository/index', '{"bad":1}')).statusCode, 400);
});

t.test('repository routes are behind the API key when auth is on; the v2 probes are not', async (t) => {
  const dir = t.testdir();
  const keys = join(dir, 'keys');
  writeFileSync(keys, 'k-0123456789abcdef-test\n');
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0, authKeysFile: keys } });
  for (const url of ['/v2/repository/index', '/v2/repository/models/add/unload', '/v2/repository/models/add/load', '/v2/models/add/infer']) {
    t.equal((await app.inject({ method: 'POST', url })).statusCode, 401, `${url} needs a key`);
  }
  t.equal((await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { authorization: 'Bearer k-0123456789abcdef-test' } })).statusCode, 200, 'with the key');
  t.equal((await app.inject({ method: 'GET', url: '/v2/health/ready' })).statusCode, 200, 'probes stay open');
});
