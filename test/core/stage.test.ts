/**
 * A stage owns its batchers: the image batcher where the model takes images and, for a model served as raw
 * tensors, a tensor batcher. Both are counted in the stage's depth, drained by close() and rejected by destroy().
 * Real sessions (a tiny generated model, and mobilenet from ../shared) with the worker held, so that requests stay
 * queued while the test looks.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { BatchingSchema } from '../../src/config/manifest.js';
import { nominalDims } from '../../src/config/input-spec.js';
import { Stage, type StageOptions } from '../../src/core/stage.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import type { TensorItem } from '../../src/core/tensor-batcher.js';
import { noopTelemetry } from '../../src/core/telemetry.js';
import { OcularError } from '../../src/errors.js';
import { greyPixels } from '../../src/tasks/pipeline.js';
import { mobilenetV2Spec } from '../fixtures/input-specs.js';
import { modelPath, sharedTestOptions } from '../helpers/shared.js';
import { addModel } from '../v2/helpers.js';

const silent = { info() {}, warn() {}, error() {}, debug() {} };

function stageOptions(overrides: Partial<StageOptions> & Pick<StageOptions, 'modelPath'>): StageOptions {
  return {
    model: 'm',
    stage: 'main',
    batching: BatchingSchema.parse({ maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 16 }),
    defaultTimeoutMs: 30_000,
    instances: 1,
    providers: ['cpu'],
    fallbackToCpu: false,
    gpuDeviceId: 0,
    intraOpNumThreads: 1,
    shapePolicy: 'fixed',
    telemetry: noopTelemetry,
    logger: silent,
    ...overrides,
  };
}

/** The tiny C = A + B model ([-1, 4] float32) as a raw-tensor stage: no image input spec. */
async function addStage(t: Test): Promise<Stage> {
  const path = join(t.testdir(), 'add.onnx');
  writeFileSync(path, addModel());
  const stage = await Stage.create(stageOptions({ modelPath: path, servesTensors: true, warmupDims: [1, 4] }));
  t.teardown(() => stage.close());
  return stage;
}

function addItem(a: number): TensorItem {
  const feed = (v: number) => ({ data: new Float32Array(4).fill(v), dims: [1, 4], type: 'float32' });
  return { feeds: { A: feed(a), B: feed(1) }, rows: 1 };
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  if (!check()) throw new Error(`timed out waiting for ${what}`);
}

t.test('a stage of a raw-tensor model is created without an image input spec and owns a tensor batcher only', async (t) => {
  const stage = await addStage(t);
  t.equal(stage.batcher, undefined, 'no image batcher: the model takes no images');
  await t.rejects(stage.run(greyPixels(4, 1)), /takes no images/, 'an image is refused');
  const tensors = stage.tensors;
  if (tensors === undefined) throw new Error('no tensor batcher');
  const run = await tensors.run(addItem(2));
  t.same([...(run.outputs['C']?.data ?? [])], [3, 3, 3, 3], 'C = A + B');
});

t.test('closing a stage runs the tensor requests queued behind a busy worker, and refuses new ones', async (t) => {
  const stage = await addStage(t);
  const tensors = stage.tensors;
  if (tensors === undefined) throw new Error('no tensor batcher');
  const hold = testHooksOf(stage.pool).hold();
  await hold.entered;
  t.teardown(() => hold.release());
  // The first request's batch waits in the pool behind the hold; the other two wait in the tensor batcher.
  const answers = [1, 2, 3].map((a) => tensors.run(addItem(a)));
  await until('two requests to queue', () => stage.depth === 2);
  t.equal(stage.depth, 2, 'queued tensor requests count in the stage depth');

  const closed = stage.close();
  await t.rejects(tensors.run(addItem(9)), { code: 'DRAINING' }, 'a request after close() is refused');
  hold.release();
  const runs = await Promise.all(answers);
  t.same(runs.map((r) => r.outputs['C']?.data[0]), [2, 3, 4], 'every queued request ran, with its own rows');
  await closed;
  t.equal(stage.depth, 0);
});

t.test('destroying a stage rejects what both its batchers queued; the batches in the pool finish', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx'), async (t) => {
  const stage = await Stage.create(
    stageOptions({
      modelPath: modelPath('mobilenetv2-12-int8'),
      input: mobilenetV2Spec,
      warmupDims: nominalDims(mobilenetV2Spec, 1),
      servesTensors: true,
    }),
  );
  t.teardown(() => stage.close());
  const tensors = stage.tensors;
  if (tensors === undefined) throw new Error('no tensor batcher');
  const image = greyPixels(mobilenetV2Spec.width, mobilenetV2Spec.height);
  const dims = nominalDims(mobilenetV2Spec, 1);
  const tensor: TensorItem = { feeds: { input: { data: new Float32Array(3 * 224 * 224), dims, type: 'float32' } }, rows: 1 };

  const hold = testHooksOf(stage.pool).hold();
  await hold.entered;
  t.teardown(() => hold.release());
  // Each batcher hands its first request to the pool (where it waits behind the hold) and queues the second.
  const running = [stage.run(image), tensors.run(tensor)];
  const queued = [stage.run(image), tensors.run(tensor)];
  await until('one request of each kind to queue', () => stage.depth === 2);
  t.equal(stage.batcher?.depth, 1, 'one image queued');
  t.equal(stage.depth, 2, 'and one raw tensor request: the depth counts both');

  stage.destroy();
  const settled = await Promise.allSettled(queued);
  for (const [i, s] of settled.entries()) {
    t.ok(s.status === 'rejected' && s.reason instanceof OcularError && s.reason.code === 'DRAINING', `queued request ${i} rejected DRAINING`);
  }
  t.equal(stage.depth, 0, 'nothing left queued');
  hold.release();
  const done = await Promise.all(running);
  t.same(done.map((r) => r.outputs['output']?.dims), [[1, 1000], [1, 1000]], 'the requests already in the pool answer');
});
