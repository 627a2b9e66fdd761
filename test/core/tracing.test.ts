import t from 'tap';
import type { RunResult } from '../../src/core/run-result.js';
import { emptyTimings } from '../../src/core/telemetry.js';
import { recordRun, recordStage, traceBatch, type BatchAttributes, type BatchTracer, type RequestTrace } from '../../src/core/tracing.js';
import { OcularError } from '../../src/errors.js';

function fakeTracer() {
  const started: BatchAttributes[] = [];
  const ended: unknown[] = [];
  const tracer: BatchTracer = {
    startBatch(attrs) {
      started.push(attrs);
      const link = { batch: started.length };
      return { link, end: (error?: unknown) => void ended.push(error ?? 'ok') };
    },
  };
  return { tracer, started, ended };
}

const attrs = (size: number): BatchAttributes => ({ model: 'm', version: '1', stage: 'main', provider: 'cpu', size, kind: 'images' });
const item = () => ({ outputs: {}, inferenceMs: 3 });

t.test('a traced batch: one span, ended after the run, its link on every result that is not an Error', async (t) => {
  const { tracer, started, ended } = fakeTracer();
  const failedSlot = new OcularError('INVALID_REQUEST');
  let ranBeforeEnd = false;
  const results = await traceBatch(tracer, () => attrs(3), async () => {
    ranBeforeEnd = ended.length === 0;
    return [item(), failedSlot, item()];
  });
  t.ok(ranBeforeEnd, 'the span is open while the batch runs');
  t.same(started, [attrs(3)]);
  t.same(ended, ['ok']);
  t.same((results[0] as { batch?: unknown }).batch, { batch: 1 });
  t.equal(results[1], failedSlot, 'an Error slot is left as it is');
  t.same((results[2] as { batch?: unknown }).batch, { batch: 1 });
});

t.test('a batch that throws ends its span with the error and rethrows it', async (t) => {
  const { tracer, ended } = fakeTracer();
  const boom = new OcularError('INFERENCE_FAILED');
  await t.rejects(traceBatch(tracer, () => attrs(1), async () => Promise.reject(boom)), boom);
  t.same(ended, [boom]);
});

t.test('without a tracer the batch runs untouched and its attributes are never built', async (t) => {
  let built = false;
  const results = await traceBatch(undefined, () => ((built = true), attrs(1)), async () => [item()]);
  t.notOk(built);
  t.notOk('batch' in (results[0] as object));
});

t.test('recordStage adds to the timings and, where traced, records the stage from its start to now', async (t) => {
  const timings = emptyTimings();
  const since = performance.now() - 5;
  recordStage(timings, 'preprocess', since);
  recordStage(timings, 'postprocess', since);
  t.ok(timings.preprocessMs >= 5 && timings.postprocessMs >= 5, 'untraced: the timings alone');

  const stages: [string, number, number][] = [];
  const runs: RunResult[] = [];
  const trace: RequestTrace = { stage: (name, start, end) => void stages.push([name, start, end]), run: (r) => void runs.push(r) };
  const traced = { ...emptyTimings(), trace };
  recordStage(traced, 'preprocess', since);
  t.equal(stages.length, 1);
  t.equal(stages[0]?.[0], 'preprocess');
  t.equal(stages[0]?.[1], since);
  t.equal((stages[0]?.[2] ?? 0) - since, traced.preprocessMs, 'the span and the timing cover the same time');
  const run: RunResult = { outputs: {}, inferenceMs: 2, queueMs: 1, batchSize: 2, enqueuedAt: since };
  recordRun(traced, run);
  t.same(runs, [run]);
  t.equal(traced.queueMs, 0, "recordRun leaves the timings' queue and inference to the caller");
});
