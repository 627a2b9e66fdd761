/**
 * Reloads that see the files (issue #20): what a reload compares is the manifest entry and the content hashes of
 * its model and labels files. In process, on tiny generated models: a repository load of an unchanged model
 * answers "unchanged" and builds nothing (unless forced); a model file replaced in place under the same entry is
 * loaded as a new version, by the repository API and by the file watch; a missing file fails in one line naming
 * the entry, the field and the path, the old version still serving.
 */
import { renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { V2ErrorSchema } from '../../src/errors.js';
import { encodeModel, readResponse, writeTinyManifest } from './helpers.js';

const FLOAT = 1;
/** C = A - B: the same inputs and outputs as the add model, other answers. */
const subModel = (): Buffer =>
  encodeModel([{ opType: 'Sub', input: ['A', 'B'], output: ['C'] }], [
    ['A', FLOAT, ['N', 4]],
    ['B', FLOAT, ['N', 4]],
  ], [['C', FLOAT, ['N', 4]]]);

const INFER = JSON.stringify({ inputs: [{ name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] }, { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] }] });
const SUM = [2, 3, 4, 5];
const DIFFERENCE = [0, 1, 2, 3];

/** The tiny manifest with `add` pinned by path only (no sha256), so that its file can be replaced in place. */
function unpinned(dir: string): string {
  return writeTinyManifest(dir, (models) => {
    delete (models.find((m) => m['name'] === 'add') as Record<string, unknown>)['sha256'];
  });
}

t.test('repository load: unchanged answers "unchanged", force reloads, a replaced file is a new version', async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, { manifestPath: unpinned(dir), config: { device: 'cpu', manifestWatchMs: 0, modelControl: 'explicit' } });
  const post = (url: string, payload?: string) => app.inject({ method: 'POST', url, ...(payload !== undefined ? { headers: { 'content-type': 'application/json' }, payload } : {}) });
  const answer = async () => readResponse((await post('/v2/models/add/infer', INFER)).rawPayload, undefined).json.outputs[0]?.data;
  const models = app.ocular.models;
  const first = models.get('add');
  t.same(await answer(), SUM);

  const unchanged = await post('/v2/repository/models/add/load', '{}');
  t.equal(unchanged.statusCode, 200);
  t.same(unchanged.json(), { status: 'unchanged' }, 'same entry, same files: unchanged');
  t.equal(models.get('add'), first, 'nothing was built: the same version object serves');

  const forced = await post('/v2/repository/models/add/load', '{"parameters":{"force":true}}');
  t.same(forced.json(), { status: 'loaded' }, 'force: true reloads');
  t.not(models.get('add'), first, 'a new version object');
  t.same(await answer(), SUM);

  const bad = await post('/v2/repository/models/add/load', '{"parameters":{"force":"yes"}}');
  t.equal(bad.statusCode, 400);
  t.match(V2ErrorSchema.parse(bad.json()).error, /parameters\.force must be true or false/);

  // The model file replaced in place, the manifest untouched.
  writeFileSync(join(dir, 'add.onnx'), subModel());
  const replaced = await post('/v2/repository/models/add/load');
  t.same(replaced.json(), { status: 'loaded' }, 'a replaced model file is a change');
  t.same(await answer(), DIFFERENCE, 'answers come from the new file');
  t.same((await post('/v2/repository/models/add/load')).json(), { status: 'unchanged' }, 'and once loaded it is unchanged again');

  // A missing file: one line naming the entry, the field and the path; the old version keeps serving.
  const serving = models.get('add');
  rmSync(join(dir, 'add.onnx'));
  const missing = await post('/v2/repository/models/add/load');
  t.equal(missing.statusCode, 400);
  const err = V2ErrorSchema.parse(missing.json());
  t.equal(err.code, 'MODEL_LOAD_FAILED');
  // A caller who is not an admin reads the file's name, not its absolute path (issue #19's publicText).
  t.match(err.error, 'manifest entry "add" source: add.onnx does not exist');
  t.notMatch(err.error, dir, 'no absolute path to a caller who is not an admin');
  t.notMatch(err.error, /\n/, 'one line');
  t.equal(err.error.split('does not exist').length, 2, `said once: ${err.error}`);
  t.equal(models.get('add'), serving, 'the old version still serves');
  t.same(await answer(), DIFFERENCE);
});

t.test('the manifest watch reloads a model whose file was replaced, and only that model', async (t) => {
  const dir = t.testdir();
  const { app, logs } = await buildTestApp(t, { manifestPath: unpinned(dir), config: { device: 'cpu', manifestWatchMs: 50 } });
  const answer = async () =>
    readResponse((await app.inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json' }, payload: INFER })).rawPayload, undefined).json.outputs[0]
      ?.data;
  const other = app.ocular.models.get('mymodel');
  t.same(await answer(), SUM);
  // The file is replaced the way an operator should: written beside it, renamed over it.
  writeFileSync(join(dir, 'add.onnx.new'), subModel());
  renameSync(join(dir, 'add.onnx.new'), join(dir, 'add.onnx'));
  // The answer switches before the reload's report is logged (the old version is released in between): wait for both.
  const reloaded = () => logs.find('manifest reloaded').find((l) => (l['loaded'] as string[]).includes('add'));
  for (let i = 0; i < 400 && reloaded() === undefined; i++) await new Promise((r) => setTimeout(r, 50));
  t.same(await answer(), DIFFERENCE, 'the new file serves');
  t.ok(logs.find('model files changed').length >= 1, 'the watch saw the file');
  const reload = reloaded();
  t.same(reload?.['loaded'], ['add'], 'only the changed model was loaded');
  t.same(reload?.['unchanged'], ['mymodel']);
  t.equal(app.ocular.models.get('mymodel'), other, 'the other model was left alone');

  // Touched, not changed: the watch reloads, and the fingerprints say nothing changed.
  const serving = app.ocular.models.get('add');
  const reloads = logs.find('manifest reloaded').length;
  const later = new Date(Date.now() + 60_000);
  utimesSync(join(dir, 'add.onnx'), later, later);
  for (let i = 0; i < 400 && logs.find('manifest reloaded').length === reloads; i++) await new Promise((r) => setTimeout(r, 50));
  const touched = logs.find('manifest reloaded').at(-1);
  t.same([...((touched?.['unchanged'] as string[] | undefined) ?? [])].sort(), ['add', 'mymodel'], `a touched file with the same content is unchanged: ${JSON.stringify(touched)}`);
  t.equal(app.ocular.models.get('add'), serving, 'nothing was built');
});
