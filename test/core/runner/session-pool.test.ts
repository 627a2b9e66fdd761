import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { isFatalGpuError } from '../../../src/core/runner/fatal-gpu-error.js';
import { testHooksOf } from '../../../src/core/runner/fault-injection.js';
import type { SessionPoolOptions } from '../../../src/core/runner/options.js';
import { createSessionPool, type SessionPool, type TensorFeeds } from '../../../src/core/runner/session-pool.js';
import { type NormalizeParams, normalizeParamsOf } from '../../../src/core/runner/normalize.js';
import { mobilenetV2Spec, yoloxNanoSpec } from '../../fixtures/input-specs.js';
import type { PreparedPixels } from '../../../src/core/types.js';
import { OcularError } from '../../../src/errors.js';
import { cpuPoolOptions } from '../../helpers/pool-options.js';
import { maxAbsDiff, modelPath, readTensorProto, sharedPath, sharedTestOptions } from '../../helpers/shared.js';
import { encodeModel, FLOAT } from '../../v2/helpers.js';

// Profiling traces go to os.tmpdir(); a private one for this file (the workers share process.env) lets the test
// check that this pool removed its own trace while other test files run in parallel.
process.env['TMPDIR'] = mkdtempSync(join(tmpdir(), 'ocular-pool-test-'));

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const YOLOX = 'models/yolox-nano/model.onnx';

// The models' own input specs (test/fixtures/input-specs.ts), as the runner receives them.
const IMAGENET: NormalizeParams = normalizeParamsOf(mobilenetV2Spec);
const YOLOX_NORM: NormalizeParams = normalizeParamsOf(yoloxNanoSpec);

interface LogLine {
  level: string;
  obj: object;
  msg: string;
}

function captureLogger(): { logger: NonNullable<SessionPoolOptions['logger']>; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (obj: object, msg: string) => void lines.push({ level, obj, msg });
  return { logger: { info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') }, lines };
}

function mobilenetOptions(overrides: Partial<SessionPoolOptions> = {}): SessionPoolOptions {
  return cpuPoolOptions('mobilenet', modelPath('mobilenetv2-12-int8'), { normalize: IMAGENET, ...overrides });
}

/** Deterministic pseudo-random RGB pixels (xorshift), so runs are reproducible. */
function pixels(width: number, height: number, seed: number): PreparedPixels {
  const data = new Uint8Array(width * height * 3);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < data.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = x & 0xff;
  }
  return { pixels: data, width, height };
}

async function openPool(t: Test, opts: SessionPoolOptions): Promise<SessionPool> {
  const pool = await createSessionPool(opts);
  t.teardown(() => pool.close());
  return pool;
}

/** The text onnxruntime itself gives when asked for CUDA here, or undefined where CUDA works. */
async function cudaErrorText(): Promise<string | undefined> {
  try {
    const s = await ort.InferenceSession.create(modelPath('mobilenetv2-12-int8'), {
      executionProviders: ['cuda', 'cpu'],
      logSeverityLevel: 4,
    });
    await s.release();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

t.test('a batch of three equals three single runs', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions());
  const items = [pixels(224, 224, 1), pixels(224, 224, 2), pixels(224, 224, 3)];
  const batch = await pool.runImages({ items, tensorHeight: 224, tensorWidth: 224 });
  const out = batch['output'];
  t.same(out?.dims, [3, 1000]);
  for (let i = 0; i < 3; i++) {
    const single = await pool.runImages({ items: [items[i] as PreparedPixels], tensorHeight: 224, tensorWidth: 224 });
    t.same(single['output']?.dims, [1, 1000]);
    const row = out?.data.subarray(i * 1000, (i + 1) * 1000) ?? new Float32Array(0);
    t.ok(maxAbsDiff(row, single['output']?.data ?? []) <= 1e-4, `item ${i} matches its single run`);
  }
  t.not(maxAbsDiff(out?.data.subarray(0, 1000) ?? [], out?.data.subarray(1000, 2000) ?? []), 0, 'items differ');
});

t.test('padTo: the session sees padTo rows (the stale ones after the items), the answer only the items\' rows', async (t) => {
  // y = x + sum(x over the whole batch): every output row shows how many rows, and which, the session was given.
  const dir = mkdtempSync(join(tmpdir(), 'ocular-pad-model-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'batch-sum.onnx');
  writeFileSync(
    path,
    encodeModel(
      [
        { opType: 'ReduceSum', input: ['x'], output: ['s'] },
        { opType: 'Add', input: ['x', 's'], output: ['y'] },
      ],
      [['x', FLOAT, ['N', 3, 2, 2]]],
      [['y', FLOAT, ['N', 3, 2, 2]]],
    ),
  );
  const identity: NormalizeParams = { layout: 'NCHW', channelOrder: 'RGB', scale: 1, mean: [0, 0, 0], std: [1, 1, 1] };
  const pool = await openPool(t, mobilenetOptions({ modelName: 'batch-sum', modelPath: path, normalize: identity }));
  const flat = (v: number): PreparedPixels => ({ pixels: new Uint8Array(12).fill(v), width: 2, height: 2 });
  const values = (o: Awaited<ReturnType<SessionPool['runImages']>>) => [...new Set(o['y']?.data ?? [])];

  const full = await pool.runImages({ items: [flat(10), flat(10), flat(10), flat(10)], tensorHeight: 2, tensorWidth: 2 });
  t.same(full['y']?.dims, [4, 3, 2, 2]);
  t.same(values(full), [10 + 4 * 12 * 10]);

  const padded = await pool.runImages({ items: [flat(1)], tensorHeight: 2, tensorWidth: 2, padTo: 4 });
  t.same(padded['y']?.dims, [1, 3, 2, 2], 'the answer has the one item\'s row');
  t.equal(padded['y']?.data.length, 12);
  t.same(values(padded), [1 + 12 * 1 + 3 * 12 * 10], 'the session ran 4 rows: the item and 3 left from the last batch');

  const alone = await pool.runImages({ items: [flat(1)], tensorHeight: 2, tensorWidth: 2 });
  t.same(values(alone), [1 + 12], 'without padTo, one row');
});

t.test('padTo: the session runs a batch of that many rows, the outputs keep the items\' rows, stale rows leak nothing', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions());
  const items = Array.from({ length: 6 }, (_, i) => pixels(224, 224, 10 + i));
  // Unpadded reference rows, each from a run of its own.
  const alone = [];
  for (const item of items) alone.push((await pool.runImages({ items: [item], tensorHeight: 224, tensorWidth: 224 }))['output']?.data);
  // A full batch fills the worker's batch tensor with six other images; the padded runs after it reuse those rows.
  const full = await pool.runImages({ items: Array.from({ length: 6 }, (_, i) => pixels(224, 224, 50 + i)), tensorHeight: 224, tensorWidth: 224 });
  t.same(full['output']?.dims, [6, 1000]);
  for (const n of [1, 2, 5]) {
    const padded = await pool.runImages({ items: items.slice(0, n), tensorHeight: 224, tensorWidth: 224, padTo: 6 });
    const out = padded['output'];
    t.same(out?.dims, [n, 1000], `${n} of 6 rows: outputs have the items' rows only`);
    t.equal(out?.data.length, n * 1000);
    for (let i = 0; i < n; i++) {
      const row = out?.data.subarray(i * 1000, (i + 1) * 1000) ?? new Float32Array(0);
      t.ok(maxAbsDiff(row, alone[i] ?? []) <= 1e-4, `${n} of 6 rows: item ${i} matches its unpadded run`);
    }
  }
  // padTo at or below the item count changes nothing.
  const same = await pool.runImages({ items: items.slice(0, 3), tensorHeight: 224, tensorWidth: 224, padTo: 2 });
  t.same(same['output']?.dims, [3, 1000]);
});

t.test('a raw tensor run matches the reference output', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions());
  const input = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_0/input_0.pb'));
  const expected = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_0/output_0.pb'));
  const outputs = await pool.runTensors({ input: { data: input.data, dims: input.dims, type: 'float32' } });
  t.same(outputs['output']?.dims, expected.dims);
  t.ok(maxAbsDiff(outputs['output']?.data ?? [], expected.data) <= 1e-4, 'within 1e-4 of output_0.pb');
  t.equal(input.data.length, 0, 'the feed buffer was moved to the worker, not copied: the caller\'s array is detached');
  // A feed that views part of a larger buffer is copied (its own bytes only): the rest of the buffer stays usable.
  const again = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_0/input_0.pb'));
  const larger = new Float32Array(again.data.length + 8);
  larger.set(again.data, 4);
  const view = larger.subarray(4, 4 + again.data.length);
  const fromView = await pool.runTensors({ input: { data: view, dims: again.dims, type: 'float32' } });
  t.ok(maxAbsDiff(fromView['output']?.data ?? [], expected.data) <= 1e-4, 'a view of part of a buffer runs the same');
  t.equal(view.length, again.data.length, 'and its caller keeps it');
  // Feeds already given to a run cannot be sent again: that run fails, and the pool goes on.
  await t.rejects(pool.runTensors({ input: { data: input.data, dims: input.dims, type: 'float32' } }), { code: 'INFERENCE_FAILED' });
  const after = await pool.runTensors({ input: { data: view, dims: again.dims, type: 'float32' } });
  t.ok(maxAbsDiff(after['output']?.data ?? [], expected.data) <= 1e-4, 'the next run is served');
});

t.test('each session counts the distinct input shapes it ran; a padded raw-tensor run keeps the rows asked for', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions());
  t.same(pool.shapeCounts(), [0], 'the profiled run is not counted');
  const input = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_1/input_0.pb'));
  const expected = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_1/output_0.pb'));
  const per = 3 * 224 * 224;
  // runTensors takes its feeds' buffers (they are moved to the worker): each run gets feeds of its own.
  const three = (): TensorFeeds => ({ input: { data: input.data.slice(0, 3 * per), dims: [3, 3, 224, 224], type: 'float32' } });
  const padded = await pool.runTensors(three(), 8);
  t.same(padded['output']?.dims, [3, 1000], 'the padding rows never come back');
  const diff = maxAbsDiff(padded['output']?.data ?? [], expected.data.subarray(0, 3000));
  t.ok(diff <= 1e-4, `rows equal the reference (max |diff| ${diff.toExponential(2)})`);
  t.same(pool.shapeCounts(), [1]);
  await pool.runTensors({ input: { data: input.data.slice(), dims: input.dims, type: 'float32' } });
  t.same(pool.shapeCounts(), [1], 'eight real rows: the padded shape again');
  await pool.runTensors(three());
  t.same(pool.shapeCounts(), [2], 'three rows unpadded: a second shape');
  await pool.runImages({ items: [pixels(224, 224, 1)], tensorHeight: 224, tensorWidth: 224 });
  await pool.runImages({ items: [pixels(224, 224, 2)], tensorHeight: 224, tensorWidth: 224, padTo: 8 });
  t.same(pool.shapeCounts(), [3], 'images of one row, then padded to eight (already seen)');
});

t.test('an exact int8 setting reaches every session and the ready log, with its reason', sharedTestOptions(MOBILENET), async (t) => {
  const { logger, lines } = captureLogger();
  const reason = 'set by the test';
  const pool = await openPool(t, mobilenetOptions({ instances: 2, logger, int8Precision: { exact: true, reason } }));
  t.equal(pool.info.exactInt8, true);
  t.match(lines.find((l) => l.msg === 'session pool ready')?.obj, { exactInt8: true, exactInt8Reason: reason });
  const input = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_1/input_0.pb'));
  const expected = readTensorProto(sharedPath('models/mobilenetv2-12-int8/test_data_set_1/output_0.pb'));
  // Two runs at once go to the two instances; each must give the reference logits on any x86 CPU.
  const runs = await Promise.all([0, 1].map(() => pool.runTensors({ input: { data: input.data.slice(), dims: input.dims, type: 'float32' } })));
  for (const [i, out] of runs.entries()) {
    const diff = maxAbsDiff(out['output']?.data ?? [], expected.data);
    t.ok(diff <= 1e-4, `run ${i}: max |diff| ${diff.toExponential(2)} <= 1e-4 from output_0.pb`);
  }
});

t.test('instances auto: two sessions on the CPU of a 2-core machine, one on a single core', sharedTestOptions(MOBILENET), async (t) => {
  const two = await openPool(t, mobilenetOptions({ instances: 'auto', cpus: 2 }));
  t.equal(two.instances, 2);
  t.equal(two.idle, 2, 'both workers started before the pool is ready');
  const [a, b] = await Promise.all([
    two.runImages({ items: [pixels(224, 224, 1)], tensorHeight: 224, tensorWidth: 224 }),
    two.runImages({ items: [pixels(224, 224, 2)], tensorHeight: 224, tensorWidth: 224 }),
  ]);
  t.same([a['output']?.dims, b['output']?.dims], [[1, 1000], [1, 1000]], 'two batches at once, one per worker');
  const one = await openPool(t, mobilenetOptions({ instances: 'auto', cpus: 1 }));
  t.equal(one.instances, 1);
});

t.test('session info shows the provider, node counts and dynamic batch', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions({ instances: 2 }));
  t.equal(pool.instances, 2);
  t.equal(pool.idle, 2);
  t.equal(pool.info.provider, 'cpu');
  t.same(pool.info.requestedProviders, ['cpu']);
  t.ok((pool.info.nodeCounts['CPUExecutionProvider'] ?? 0) > 0, 'nodes ran on the CPU provider');
  const traces = (await readdir(tmpdir())).filter((f) => f.startsWith('ocular-profile-'));
  t.same(traces, [], 'the profiling trace was removed');
  t.same(pool.info.inputs, [
    { name: 'input', type: 'float32', shape: [-1, 3, 224, 224], symbolicShape: ['batch_size', '', '', ''] },
  ]);
  t.same(pool.info.outputs, [{ name: 'output', type: 'float32', shape: [-1, 1000], symbolicShape: ['batch_size', ''] }]);
});

t.test('auto on a machine without cuda serves from cpu and says why', sharedTestOptions(MOBILENET), async (t) => {
  const observed = await cudaErrorText();
  if (observed === undefined) {
    t.comment('cuda works here: no fallback to observe');
    return;
  }
  const { logger, lines } = captureLogger();
  const pool = await openPool(t, mobilenetOptions({ providers: ['cuda', 'cpu'], fallbackToCpu: true, logger }));
  t.equal(pool.info.provider, 'cpu');
  t.same(pool.info.requestedProviders, ['cuda', 'cpu']);
  t.ok(pool.info.fallbackReason?.includes(observed), `fallbackReason carries "${observed}"`);
  // A debug line here: the stage loader warns once per process, with the remedy (test/core/stage-loader.test.ts).
  const warning = lines.find((l) => l.level === 'debug' && l.msg === 'execution provider fallback');
  t.ok(warning, 'the fallback is logged for debugging');
  t.ok(String((warning?.obj as { reason?: unknown }).reason).includes(observed));
  const out = await pool.runImages({ items: [pixels(224, 224, 9)], tensorHeight: 224, tensorWidth: 224 });
  t.same(out['output']?.dims, [1, 1000]);
});

t.test('cuda without fallback fails to start with onnxruntime’s text', sharedTestOptions(MOBILENET), async (t) => {
  const observed = await cudaErrorText();
  if (observed === undefined) {
    t.comment('cuda works here: nothing to fail');
    return;
  }
  let thrown: unknown;
  try {
    const pool = await createSessionPool(mobilenetOptions({ providers: ['cuda'], fallbackToCpu: false }));
    await pool.close();
  } catch (err) {
    thrown = err;
  }
  t.type(thrown, Error);
  t.ok((thrown as Error).message.includes(observed), 'the startup error names onnxruntime’s failure');
});

t.test('a run error is answered and the worker keeps serving', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions());
  await t.rejects(pool.runTensors({ input: { data: new Float32Array(12), dims: [1, 3, 2, 2], type: 'float32' } }), {
    code: 'INFERENCE_FAILED',
  });
  const out = await pool.runImages({ items: [pixels(224, 224, 4)], tensorHeight: 224, tensorWidth: 224 });
  t.same(out['output']?.dims, [1, 1000]);
  t.equal(pool.restarts, 0);
});

t.test('runs beyond the instance count wait their turn', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await openPool(t, mobilenetOptions());
  const runs = [1, 2, 3, 4].map((seed) =>
    pool.runImages({ items: [pixels(224, 224, seed)], tensorHeight: 224, tensorWidth: 224 }),
  );
  const results = await Promise.all(runs);
  t.same(
    results.map((r) => r['output']?.dims),
    [
      [1, 1000],
      [1, 1000],
      [1, 1000],
      [1, 1000],
    ],
  );
  t.equal(pool.idle, 1);
});

t.test('a worker that dies mid-run rejects that run and is replaced', sharedTestOptions(MOBILENET), async (t) => {
  const { logger, lines } = captureLogger();
  const pool = await openPool(t, mobilenetOptions({ logger }));
  // A worker that has served a run (its session and arena in use) before it dies.
  await pool.runImages({ items: [pixels(224, 224, 12)], tensorHeight: 224, tensorWidth: 224 });
  const held = testHooksOf(pool).hold();
  await held.entered;
  t.equal(pool.idle, 0, 'the only instance is busy');
  held.crash();
  await t.rejects(held.done, { code: 'INFERENCE_FAILED', message: /exited with code \d+ during a run/ });
  t.equal(pool.restarts, 1);
  t.ok(lines.some((l) => l.level === 'error' && l.msg === 'worker exited, replacing it'));
  // The next run waits for the replacement session, then is served.
  const out = await pool.runImages({ items: [pixels(224, 224, 5)], tensorHeight: 224, tensorWidth: 224 });
  t.same(out['output']?.dims, [1, 1000]);
  t.equal(pool.idle, 1);
});

t.test('a blocked instance holds neither another instance nor another pool', sharedTestOptions(MOBILENET, YOLOX), async (t) => {
  const classifier = await openPool(t, mobilenetOptions({ instances: 2 }));
  const detector = await openPool(t, {
    ...mobilenetOptions(),
    modelName: 'yolox',
    modelPath: modelPath('yolox-nano'),
    normalize: YOLOX_NORM,
  });
  const held = testHooksOf(classifier).hold();
  let heldSettled = false;
  void held.done.then(() => (heldSettled = true));
  await held.entered;

  const other = await classifier.runImages({ items: [pixels(224, 224, 6)], tensorHeight: 224, tensorWidth: 224 });
  t.same(other['output']?.dims, [1, 1000], 'the second instance of the same pool served');
  const letterboxed = pixels(416, 234, 7); // a 16:9 image on a 416 canvas, padded below
  const detections = await detector.runImages({
    items: [letterboxed, pixels(416, 416, 8)],
    tensorHeight: 416,
    tensorWidth: 416,
    padValue: 114,
  });
  t.same(detections['output']?.dims, [2, 3549, 85], 'another model’s pool served');
  t.notOk(heldSettled, 'all of that while the held instance was still blocked');

  held.release();
  await held.done;
  t.equal(classifier.idle, 2);
});

t.test('close lets an in-flight run finish, then refuses new ones', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await createSessionPool(mobilenetOptions());
  const held = testHooksOf(pool).hold();
  await held.entered;
  const queued = pool.runImages({ items: [pixels(224, 224, 10)], tensorHeight: 224, tensorWidth: 224 });
  let closed = false;
  const closing = pool.close().then(() => (closed = true));
  t.equal(pool.close(), pool.close(), 'close is idempotent');
  await t.rejects(pool.runImages({ items: [pixels(224, 224, 11)], tensorHeight: 224, tensorWidth: 224 }), {
    code: 'DRAINING',
  });
  t.notOk(closed, 'close waits while a run is in flight');
  held.release();
  await held.done;
  const out = await queued;
  t.same(out['output']?.dims, [1, 1000], 'the queued run was served before the workers ended');
  await closing;
  t.ok(closed);
  t.equal(pool.idle, 0);
});

t.test('cuda and cudnn failures count as fatal, ordinary run errors do not', async (t) => {
  // No real CUDA failure can be caused on a CPU machine; these are onnxruntime's CUDA provider error formats.
  t.ok(isFatalGpuError('CUDA failure 700: an illegal memory access was encountered ; GPU=0'));
  t.ok(isFatalGpuError('CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR'));
  t.ok(isFatalGpuError('cudaErrorMemoryAllocation'));
  t.notOk(isFatalGpuError("input 'input' is missing in 'feeds'."));
  // The model's own names, quoted by onnxruntime, do not count; the error text around them does.
  t.notOk(
    isFatalGpuError(
      "Non-zero status code returned while running Conv node. Name:'backbone/conv_cudnn_1' Status Message: Invalid input shape: {1,3,7}",
    ),
  );
  t.notOk(isFatalGpuError("Got invalid dimensions for input: 'CUDA error' for the following indices index: 0 Got: 2 Expected: 1"));
  t.ok(
    isFatalGpuError(
      "Non-zero status code returned while running Conv node. Name:'backbone/conv_1' Status Message: CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0",
    ),
  );
});

t.test('an ordinary run error does not reach onFatal', sharedTestOptions(MOBILENET), async (t) => {
  let fatal: Error | undefined;
  const pool = await openPool(t, mobilenetOptions({ onFatal: (err) => (fatal = err) }));
  await t.rejects(pool.runTensors({ other: { data: new Float32Array(1), dims: [1], type: 'float32' } }), {
    message: /missing in 'feeds'/,
  });
  t.equal(fatal, undefined);
});

t.test('halt: no run starts after it; it resolves once no worker is inside a run, or false at its timeout', sharedTestOptions(MOBILENET), async (t) => {
  const pool = await createSessionPool(mobilenetOptions({ instances: 1 }));
  const held = testHooksOf(pool).hold();
  await held.entered;
  t.equal(await pool.halt(100), false, 'a worker still inside a run: false after the timeout');
  let queuedSettled = false;
  const queued = pool.runImages({ items: [pixels(224, 224, 11)], tensorHeight: 224, tensorWidth: 224 });
  const queuedError = queued.then(
    () => undefined,
    (err: unknown) => err,
  );
  void queuedError.then(() => (queuedSettled = true));
  const quiet = pool.halt(10_000);
  held.release();
  await held.done;
  t.equal(await quiet, true, 'true once the held run has ended');
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.equal(queuedSettled, false, 'a run queued after halt was never started');
  t.equal(await pool.halt(10), true, 'nothing running: true at once');
  await pool.close();
  const err = await queuedError;
  t.equal(err instanceof OcularError ? err.code : err, 'DRAINING', 'close() refuses what halt left queued');
});
