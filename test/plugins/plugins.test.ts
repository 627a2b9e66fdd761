/**
 * The app's resources as Fastify plugins (src/plugins/, and the v2 parser's in src/protocols/oip/): each decorates
 * the app with what it owns and closes it in its own onClose, in reverse order of registration, so the registry
 * drains before the parser and the preprocessing processes it uses close; the raw body pool gets every buffer
 * back, held per request, with no module-level map.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Fastify from 'fastify';
import { createTaskPipeline } from '../../src/tasks/index.js';
import { MaskPool } from '../../src/tasks/segmentation/mask-pool.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import t from 'tap';
import { pino } from 'pino';
import { BodyPool } from '../../src/core/body-pool.js';
import { ModelRegistry } from '../../src/core/registry.js';
import { loadManifest } from '../../src/config/manifest.js';
import { InferParser } from '../../src/protocols/oip/parser.js';
import { Metrics } from '../../src/plugins/metrics.js';
import { modelsPlugin } from '../../src/plugins/models.js';
import { buildTestApp, sharedModel, testConfig, writeManifest } from '../helpers/app.js';
import { imagePath, projectRoot, sharedTestOptions } from '../helpers/shared.js';
import { writeTinyManifest } from '../v2/helpers.js';

const needs = sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', 'images/cat_chelsea.png');
const PATH = '/v1/models/mobilenetv2/predict';

/** mobilenetv2 with batches of one, so that requests queue behind a held worker. */
function oneByOneManifest(): string {
  return writeManifest([{ ...sharedModel('mobilenetv2'), batching: { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 16 } }]);
}

async function until(what: string, ready: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!ready()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Records when `target.close` starts and when what it returns settles. */
function spyClose(events: string[], name: string, target: { close(): Promise<void> | void }): void {
  const close = target.close.bind(target);
  target.close = async () => {
    events.push(`${name} close`);
    await close();
    events.push(`${name} closed`);
  };
}

t.test('each plugin decorates the app with what it owns, and the facade is built from those decorators', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', manifestWatchMs: 0 }, load: false });
  t.ok(app.metrics instanceof Metrics, 'metrics');
  t.ok(app.bodyPool instanceof BodyPool, 'the body pool');
  t.ok(app.hasRequestDecorator('pooledBody'), 'each request holds its pooled body');
  t.ok(app.inferParser instanceof InferParser, 'the v2 parser');
  t.ok(app.models instanceof ModelRegistry, 'the registry');
  t.type(app.admission.admit, 'function', 'admission');
  t.type(app.preprocessing.prepare, 'function', 'preprocessing');
  t.equal(app.preprocessing.pool, undefined, 'no preprocessing process before start');
  t.equal(app.ocular.models, app.models);
  t.equal(app.ocular.metrics, app.metrics);
  t.equal(app.ocular.bodyPool, app.bodyPool);
  t.equal(app.ocular.preprocess, app.preprocessing.pool);
});

t.test('the registry plugin does not load without the metrics and preprocessing plugins it uses', async (t) => {
  const config = testConfig({ manifest: writeTinyManifest(t.testdir()) });
  const app = Fastify();
  t.teardown(() => app.close());
  const manifest = await loadManifest(config.manifest);
  await t.rejects(async () => {
    await app.register(modelsPlugin, { manifest, config, logger: pino({ level: 'silent' }), createPipeline: createTaskPipeline({ masks: new MaskPool(), maxResponseBytes: 64 * 1024 * 1024 }) });
  }, /ocular-metrics/);
});

t.test('closing drains the registry first, then the parser, the preprocessing processes, the body pool and the metrics', needs, async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: oneByOneManifest(), config: { preprocessProcesses: 1, manifestWatchMs: 0 } });
  t.equal(await app.ocular.startPreprocessing(), 1, 'one preprocessing process');
  const pool = app.preprocessing.pool;
  if (pool === undefined) throw new Error('no preprocessing pool');
  const events: string[] = [];
  spyClose(events, 'registry', app.models);
  spyClose(events, 'parser', app.inferParser);
  spyClose(events, 'preprocessing', pool);
  spyClose(events, 'body pool', app.bodyPool);
  spyClose(events, 'metrics', app.metrics);

  // Hold the one worker, so that predictions queue behind it.
  const stage = app.models.get('mobilenetv2')?.stages[0];
  if (stage === undefined) throw new Error('mobilenetv2 has no stage');
  const hold = testHooksOf(stage.pool).hold();
  await hold.entered;
  const cat = readFileSync(imagePath('cat_chelsea.png'));
  const answers = Array.from({ length: 3 }, () =>
    app.inject({ method: 'POST', url: PATH, headers: { 'content-type': 'application/octet-stream' }, payload: cat }),
  );
  // Every prediction is in the batcher (batches of one: one waiting for the worker, the others queued).
  await until('three predictions in the batcher', () => (stage.batcher?.depth ?? 0) + (stage.batcher?.running ?? 0) === 3);

  const closed = app.close();
  await until('the registry to start closing', () => events.includes('registry close'));
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.same(events, ['registry close'], 'while queued work waits, only the registry is closing');
  hold.release();
  await closed;

  const statuses = (await Promise.all(answers)).map((res) => res.statusCode);
  t.same(statuses, [200, 200, 200], 'the queued predictions were answered');
  t.same(
    events,
    [
      'registry close',
      'registry closed',
      'parser close',
      'parser closed',
      'preprocessing close',
      'preprocessing closed',
      'body pool close',
      'body pool closed',
      'metrics close',
      'metrics closed',
    ],
    'each plugin closes in its own onClose, in reverse order of registration',
  );
  t.equal(pool.stats().ready, 0, 'the preprocessing process is gone');
});

t.test('a closed app starts no preprocessing process', async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'cpu', preprocessProcesses: 1, manifestWatchMs: 0 }, load: false });
  await app.close();
  t.equal(await app.ocular.startPreprocessing(), 0);
  t.equal(app.ocular.preprocess, undefined);
});

t.test('the body pool gets back every buffer of refused and accepted requests', needs, async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([sharedModel('mobilenetv2')]), config: { manifestWatchMs: 0 } });
  const pool = app.bodyPool;
  const cat = readFileSync(imagePath('cat_chelsea.png'));
  const post = (url: string, payload: Buffer) => app.inject({ method: 'POST', url, headers: { 'content-type': 'application/octet-stream' }, payload });
  const statuses = [
    (await post(PATH, cat)).statusCode,
    (await post('/v1/models/nope/predict', cat)).statusCode,
    (await post(`${PATH}?unknown=1`, cat)).statusCode,
    (await post(PATH, cat.subarray(0, cat.length >> 1))).statusCode,
    ...(await Promise.all(Array.from({ length: 6 }, () => post(PATH, cat)))).map((res) => res.statusCode),
  ];
  t.same(statuses, [200, 404, 400, 422, 200, 200, 200, 200, 200, 200], 'accepted, unknown model, bad query, undecodable, concurrent');
  t.equal(pool.inUse, 0, 'every buffer went back');
  t.ok(pool.freeBytes > 0, 'and is kept for the next body');

  app.models.startDraining();
  t.equal((await post(PATH, cat)).statusCode, 503, 'refused while draining');
  t.equal(pool.inUse, 0, "the refused body's buffer went back");
});

t.test('src/plugins keeps no state in module-level maps', async (t) => {
  const dir = join(projectRoot, 'src', 'plugins');
  const found = readdirSync(dir)
    .filter((name) => name.endsWith('.ts'))
    .flatMap((name) => [...readFileSync(join(dir, name), 'utf8').matchAll(/^(?:export )?(?:const|let|var) (\w+)[^=\n]*= new (?:Weak)?Map\b/gm)].map((m) => `${name}: ${m[1]}`));
  t.same(found, []);
});
