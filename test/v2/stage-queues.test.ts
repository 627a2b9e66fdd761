/**
 * Raw-tensor requests on /v2 wait in their stage's tensor batcher: they count in the model's queue depth and in
 * `ocular_queue_depth`, and a failing batch is logged once by the stage while each request logs its own failure
 * under its own request id (the batcher keeps no request's logger).
 */
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { writeTinyManifest } from './helpers.js';

const body = (a: number): string =>
  JSON.stringify({
    inputs: [
      { name: 'A', shape: [1, 4], datatype: 'FP32', data: [a, a, a, a] },
      { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] },
    ],
  });

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  if (!check()) throw new Error(`timed out waiting for ${what}`);
}

t.test('raw tensor requests queued on a model count in its depth and in ocular_queue_depth', async (t) => {
  const manifestPath = writeTinyManifest(t.testdir(), (models) => {
    const add = models.find((m) => m['name'] === 'add') as Record<string, unknown>;
    add['batching'] = { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 16 };
  });
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const model = app.ocular.models.get('add');
  const stage = model?.stages[0];
  if (model === undefined || stage === undefined) throw new Error('model add has no stage');
  const infer = (a: number) => app.inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json' }, payload: body(a) });

  const hold = testHooksOf(stage.pool).hold();
  await hold.entered;
  t.teardown(() => hold.release());
  // One request's batch waits in the pool behind the hold; the other three wait in the tensor batcher.
  const answers = [1, 2, 3, 4].map(infer);
  await until('three requests to queue', () => model.depth === 3);
  t.equal(model.depth, 3, 'the model depth counts the queued tensor requests');
  const metrics = await app.inject({ method: 'GET', url: '/metrics' });
  t.match(metrics.body, /^ocular_queue_depth\{model="add"\} 3$/m, 'and so does ocular_queue_depth');

  hold.release();
  const results = await Promise.all(answers);
  t.same(results.map((r) => r.statusCode), [200, 200, 200, 200], 'every queued request answers');
  t.same(
    results.map((r) => r.json<{ outputs: { data: number[] }[] }>().outputs[0]?.data[0]),
    [2, 3, 4, 5],
    'each with its own rows',
  );
  const after = await app.inject({ method: 'GET', url: '/metrics' });
  t.match(after.body, /^ocular_queue_depth\{model="add"\} 0$/m, 'the queue is empty again');
});

t.test('a failing tensor batch is logged by its stage; each request logs its failure under its own id', async (t) => {
  // Two one-row requests fill a batch of 2 at once: they fail together.
  const manifestPath = writeTinyManifest(t.testdir(), (models) => {
    const add = models.find((m) => m['name'] === 'add') as Record<string, unknown>;
    add['batching'] = { maxBatchSize: 2, maxQueueDelayMs: 10_000, maxQueueSize: 16 };
  });
  const { app, logs } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const stage = app.ocular.models.get('add')?.stages[0];
  if (stage === undefined) throw new Error('model add has no stage');
  const infer = (id: string, a: number) =>
    app.inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json', 'x-request-id': id }, payload: body(a) });

  // Requests before, so a batcher made on first use would have taken the first one's logger.
  const first = await Promise.all([infer('req-first', 0), infer('req-second', 0)]);
  t.same(first.map((r) => r.statusCode), [200, 200], 'the batch before answers');
  testHooksOf(stage.pool).injectFault('throw');
  const [a, b] = await Promise.all([infer('req-a', 1), infer('req-b', 2)]);
  t.equal(a.statusCode, 500, 'the batch failed for req-a');
  t.equal(b.statusCode, 500, 'and for req-b');

  const batchLines = logs.find('tensor batch failed');
  t.equal(batchLines.length, 1, 'the batch failure is logged once');
  t.equal(batchLines[0]?.['reqId'], undefined, 'by the stage, under no request id');
  t.match(batchLines[0], { model: 'add', stage: 'main', size: 2 });
  const failed = logs.find('inference failed');
  t.same(failed.map((l) => l['reqId']).sort(), ['req-a', 'req-b'], 'each request logs its own failure, under its own id');
  t.same(logs.lines.filter((l) => l['reqId'] === 'req-first' && l['level'] === 50), [], 'nothing is logged as an error under the first request id');
});
