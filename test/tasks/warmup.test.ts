import t, { type Test } from 'tap';
import { BatchingSchema } from '../../src/config/manifest.js';
import type { ImageBatch } from '../../src/core/runner/session-pool.js';
import { Stage } from '../../src/core/stage.js';
import { noopTelemetry } from '../../src/core/telemetry.js';
import { nominalDims } from '../../src/config/input-spec.js';
import { warmupStage } from '../../src/tasks/pipeline.js';
import { mobilenetV2Spec } from '../fixtures/input-specs.js';
import { modelPath, sharedTestOptions } from '../helpers/shared.js';

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const silent = { info() {}, warn() {}, error() {}, debug() {} };

/** A real mobilenet stage on the CPU provider whose pool records the rows and padTo of every run. */
async function recordedStage(t: Test, batching: object): Promise<{ stage: Stage; runs: { items: number; padTo?: number }[] }> {
  const stage = await Stage.create({
    model: 'mobilenet',
    stage: 'main',
    modelPath: modelPath('mobilenetv2-12-int8'),
    input: mobilenetV2Spec,
    batching: BatchingSchema.parse(batching),
    defaultTimeoutMs: 10_000,
    instances: 1,
    providers: ['cpu'],
    fallbackToCpu: false,
    gpuDeviceId: 0,
    intraOpNumThreads: 1,
    warmupDims: nominalDims(mobilenetV2Spec, 1),
    shapePolicy: 'fixed',
    telemetry: noopTelemetry,
    logger: silent,
  });
  t.teardown(() => stage.close());
  const runs: { items: number; padTo?: number }[] = [];
  const run = stage.pool.runImages.bind(stage.pool);
  stage.pool.runImages = (batch: ImageBatch) => {
    runs.push({ items: batch.items.length, ...(batch.padTo !== undefined && { padTo: batch.padTo }) });
    return run(batch);
  };
  return { stage, runs };
}

t.test('a padding stage warms up at its batch limit, tunes unpadded, and runs last at the limit tuning chose', sharedTestOptions(MOBILENET), async (t) => {
  const { stage, runs } = await recordedStage(t, { maxBatchSize: 4, tune: 'always', padBatches: 'always' });
  t.equal(stage.padsBatches, true);
  await warmupStage(stage, mobilenetV2Spec, 'fixed');
  t.same(runs.slice(0, 2), [{ items: 1, padTo: 4 }, { items: 4, padTo: 4 }], 'batch 1 padded to 4, then a full batch');
  const tuning = runs.slice(2, -1);
  t.ok(tuning.length >= 3 * 3, 'three rounds over sizes 1, 2, 4');
  t.ok(tuning.every((r) => r.padTo === undefined), 'tuning runs each size as it is');
  t.same(runs.at(-1), { items: 1, padTo: stage.batchLimit }, 'the last run has the shape every later run has');
});

t.test('a stage that does not pad warms up at batch 1 and at the full batch, and never pads', sharedTestOptions(MOBILENET), async (t) => {
  const { stage, runs } = await recordedStage(t, { maxBatchSize: 4, tune: 'off' });
  t.equal(stage.padsBatches, false, 'padBatches "gpu" on the CPU provider');
  await warmupStage(stage, mobilenetV2Spec, 'fixed');
  t.same(runs, [{ items: 1 }, { items: 4 }]);
});
