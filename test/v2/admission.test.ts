/**
 * Admission control on /v2 infer, shared with /v1 predict: past a model's bound (queue size plus what its workers
 * run at once) a request is refused 503 QUEUE_FULL with Retry-After, in the v2 error format, before its body is
 * parsed.
 */
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import { V2ErrorSchema } from '../../src/errors.js';
import { writeTinyManifest } from './helpers.js';

t.test('a model with a one-slot queue, flooded, answers 503 QUEUE_FULL with Retry-After before parsing', async (t) => {
  const manifestPath = writeTinyManifest(t.testdir(), (models) => {
    const add = models.find((m) => m['name'] === 'add') as Record<string, unknown>;
    add['batching'] = { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 1 };
  });
  const { app } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const body = JSON.stringify({
    inputs: [
      { name: 'A', shape: [1, 4], datatype: 'FP32', data: [1, 2, 3, 4] },
      { name: 'B', shape: [1, 4], datatype: 'FP32', data: [1, 1, 1, 1] },
    ],
  });
  const infer = (payload: string) => app.inject({ method: 'POST', url: '/v2/models/add/infer', headers: { 'content-type': 'application/json' }, payload });

  // The one worker is blocked, so admitted requests stay in progress: the bound is 1 queued + 1 x 1 running.
  const stage = app.ocular.models.get('add')?.stages[0];
  if (stage === undefined) throw new Error('model add has no stage');
  const hold = testHooksOf(stage.pool).hold();
  await hold.entered;
  const admitted = [infer(body), infer(body)];
  // inject starts a request not awaited on the next tick, an awaited one at once: let these two be admitted first.
  await new Promise((resolve) => setImmediate(resolve));

  // A malformed body: refused before parsing once the bound is reached (a parsed one would be 400).
  let refused = await infer('{not json');
  for (let i = 0; i < 100 && refused.statusCode !== 503; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    refused = await infer('{not json');
  }
  t.equal(refused.statusCode, 503, `refused (${refused.body})`);
  t.equal(refused.headers['retry-after'], '1', 'Retry-After');
  const err = V2ErrorSchema.parse(refused.json());
  t.equal(err.code, 'QUEUE_FULL');
  t.ok(err.error.length > 0, 'the v2 "error" field says why');
  const flood = await Promise.all(Array.from({ length: 8 }, () => infer(body)));
  t.ok(flood.every((r) => r.statusCode === 503 && V2ErrorSchema.parse(r.json()).code === 'QUEUE_FULL'), 'every request past the bound is refused');

  hold.release();
  await hold.done;
  for (const res of await Promise.all(admitted)) t.equal(res.statusCode, 200, 'the admitted requests answer');
  const after = await infer(body);
  t.equal(after.statusCode, 200, 'the slots are given back: a new request is admitted');
  t.equal((await infer('{not json')).statusCode, 400, 'and a malformed body is parsed (400) again');
});
