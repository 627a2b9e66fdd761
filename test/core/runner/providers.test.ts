import t from 'tap';
import * as ort from 'onnxruntime-node';
import type { InferenceSession } from 'onnxruntime-common';
import { createSessionWithFallback, resolveInstances, resolveProviders, type OrtApi } from '../../../src/core/runner/providers.js';
import { maxAbsDiff, modelPath, readTensorProto, sharedPath, sharedTestOptions } from '../../helpers/shared.js';

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const SET_1 = 'models/mobilenetv2-12-int8/test_data_set_1/input_0.pb';

interface CreateCall {
  providers: string[];
  options: InferenceSession.SessionOptions;
  error?: string;
}

/** The real onnxruntime, with every InferenceSession.create call (options and thrown error) recorded. */
function spyOrt(): { api: OrtApi; calls: CreateCall[] } {
  const calls: CreateCall[] = [];
  const api: OrtApi = {
    env: ort.env,
    InferenceSession: {
      async create(path: string, options?: InferenceSession.SessionOptions): Promise<InferenceSession> {
        const call: CreateCall = {
          providers: (options?.executionProviders ?? []).map((p) => (typeof p === 'string' ? p : p.name)),
          options: options ?? {},
        };
        calls.push(call);
        try {
          return await ort.InferenceSession.create(path, options ?? {});
        } catch (err) {
          call.error = err instanceof Error ? err.message : String(err);
          throw err;
        }
      },
    },
  };
  return { api, calls };
}

t.test('device modes resolve to provider lists', async (t) => {
  t.same(resolveProviders('auto'), { providers: ['cuda', 'cpu'], fallbackToCpu: true });
  t.same(resolveProviders('cuda'), { providers: ['cuda'], fallbackToCpu: false });
  t.same(resolveProviders('cpu'), { providers: ['cpu'], fallbackToCpu: false });
  t.same(resolveProviders('webgpu'), { providers: ['webgpu'], fallbackToCpu: false }, 'webgpu or fail: no cpu fallback');
});

t.test('an explicit provider list is used as given, a trailing cpu being the fallback', async (t) => {
  t.same(resolveProviders('cuda', ['tensorrt', 'cuda', 'cpu']), {
    providers: ['tensorrt', 'cuda', 'cpu'],
    fallbackToCpu: true,
  });
  t.same(resolveProviders('auto', ['tensorrt', 'cuda']), { providers: ['tensorrt', 'cuda'], fallbackToCpu: false });
  t.same(resolveProviders('cpu', []), { providers: ['cpu'], fallbackToCpu: false }, 'an empty list means no list');
});

t.test('auto falls back to cpu with onnxruntime’s own error as the reason', sharedTestOptions(MOBILENET), async (t) => {
  const { api, calls } = spyOrt();
  const plan = resolveProviders('auto');
  const created = await createSessionWithFallback(api, modelPath('mobilenetv2-12-int8'), plan);
  t.teardown(() => created.session.release());
  t.same(calls[0]?.providers, ['cuda', 'cpu'], 'cuda is tried first, with cpu for unsupported nodes');
  const cudaError = calls[0]?.error;
  if (cudaError === undefined) {
    // A machine with the CUDA provider libraries installed: no fallback to observe.
    t.equal(created.provider, 'cuda');
    t.equal(created.fallbackReason, undefined);
    return;
  }
  t.comment(`onnxruntime said: ${cudaError}`);
  t.match(cudaError, /Failed to load shared library/, 'what onnxruntime-node 1.30 says without libcuda providers');
  t.equal(created.provider, 'cpu');
  t.ok(created.fallbackReason?.includes(cudaError), 'the fallback reason carries onnxruntime’s text');
  t.same(created.failures, [{ provider: 'cuda', message: cudaError }]);
  t.same(calls[1]?.providers, ['cpu']);
  t.same(created.session.inputNames, ['input']);
});

t.test('cuda without a working cuda provider fails with onnxruntime’s text', sharedTestOptions(MOBILENET), async (t) => {
  const { api, calls } = spyOrt();
  let thrown: unknown;
  try {
    const created = await createSessionWithFallback(api, modelPath('mobilenetv2-12-int8'), resolveProviders('cuda'));
    await created.session.release();
  } catch (err) {
    thrown = err;
  }
  const cudaError = calls[0]?.error;
  if (cudaError === undefined) {
    t.comment('cuda provider available here: nothing to fail');
    return;
  }
  t.type(thrown, Error);
  t.ok((thrown as Error).message.includes(cudaError), 'the error names what onnxruntime said');
  t.equal(calls.length, 1, 'no cpu session is created when the fallback is not allowed');
});

t.test('cpu never asks for a gpu provider', sharedTestOptions(MOBILENET), async (t) => {
  const { api, calls } = spyOrt();
  const created = await createSessionWithFallback(api, modelPath('mobilenetv2-12-int8'), {
    ...resolveProviders('cpu'),
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
  });
  t.teardown(() => created.session.release());
  t.equal(created.provider, 'cpu');
  t.equal(created.fallbackReason, undefined);
  t.same(
    calls.map((c) => c.providers),
    [['cpu']],
  );
  t.equal(calls[0]?.options.intraOpNumThreads, 1);
  t.equal(calls[0]?.options.logSeverityLevel, 4, 'native logging limited to fatal');
  t.equal(ort.env.logLevel, 'fatal');
});

t.test('exactInt8 asks onnxruntime for u8u8 products, and the int8 mobilenet then gives its reference logits', sharedTestOptions(MOBILENET, SET_1), async (t) => {
  const input = readTensorProto(sharedPath(SET_1));
  const expected = readTensorProto(sharedPath(SET_1.replace('input_0', 'output_0')));
  const run = async (exactInt8: boolean): Promise<{ options: InferenceSession.SessionOptions; diff: number }> => {
    const { api, calls } = spyOrt();
    const created = await createSessionWithFallback(api, modelPath('mobilenetv2-12-int8'), {
      ...resolveProviders('cpu'),
      intraOpNumThreads: 1,
      allowSpinning: false,
      exactInt8,
    });
    t.teardown(() => created.session.release());
    const out = await created.session.run({ input: new ort.Tensor('float32', input.data, input.dims) });
    return { options: calls[0]?.options ?? {}, diff: maxAbsDiff(out['output']?.data as Float32Array, expected.data) };
  };
  const exact = await run(true);
  t.same(exact.options.extra, { 'session.intra_op.allow_spinning': '0', 'session.x64quantprecision': '1' }, 'both config entries');
  t.ok(exact.diff <= 1e-4, `exact: max |diff| ${exact.diff.toExponential(2)} <= 1e-4 from output_0.pb (batch 8)`);
  const usual = await run(false);
  t.same(usual.options.extra, { 'session.intra_op.allow_spinning': '0' }, 'without it, only the spinning entry');
  // Equal to the reference on a CPU with VNNI; several logits off without it (int8-precision.ts).
  t.comment(`u8s8 kernels on this CPU: max |diff| ${usual.diff.toExponential(2)} from output_0.pb`);
});

t.test('an explicit list tries each gpu provider alone (plus cpu), in order', sharedTestOptions(MOBILENET), async (t) => {
  const { api, calls } = spyOrt();
  const created = await createSessionWithFallback(api, modelPath('mobilenetv2-12-int8'), {
    ...resolveProviders('auto', ['tensorrt', 'cuda', 'cpu']),
    gpuDeviceId: 0,
  });
  t.teardown(() => created.session.release());
  const failed = calls.filter((c) => c.error !== undefined);
  if (failed.length < 2) {
    t.comment('a gpu provider is available here: the fallback chain is not exercised');
    return;
  }
  t.same(
    calls.map((c) => c.providers),
    [['tensorrt', 'cpu'], ['cuda', 'cpu'], ['cpu']],
  );
  const first = calls[0]?.options.executionProviders?.[0];
  t.same(first, { name: 'tensorrt', deviceId: 0 }, 'per-provider options carry the device id');
  t.equal(created.provider, 'cpu');
  for (const call of failed) t.ok(created.fallbackReason?.includes(call.error as string));
});

t.test('a model that cannot load fails even on cpu, with onnxruntime’s text', async (t) => {
  const { api, calls } = spyOrt();
  let thrown: unknown;
  try {
    await createSessionWithFallback(api, '/nonexistent/model.onnx', resolveProviders('cpu'));
  } catch (err) {
    thrown = err;
  }
  const loadError = calls[0]?.error;
  t.ok(loadError, 'onnxruntime refused the file');
  t.type(thrown, Error);
  t.ok((thrown as Error).message.includes(loadError as string), 'the error carries onnxruntime’s text');
});

t.test('resolveInstances: a count as given; auto is two sessions on the CPU where the cores hold them, one on a GPU', async (t) => {
  t.equal(resolveInstances(3, 'cpu', 1, 2), 3, 'a count is kept, whatever the machine');
  t.equal(resolveInstances(1, 'cuda', 8, 16), 1);
  t.equal(resolveInstances('auto', 'cpu', 1, 2), 2, '2 cores, 1 intra-op thread each');
  t.equal(resolveInstances('auto', 'cpu', 8, 16), 2, '16 cores, half of them per session (the default)');
  t.equal(resolveInstances('auto', 'cpu', 1, 1), 1, 'one core');
  t.equal(resolveInstances('auto', 'cpu', 4, 6), 1, 'two sessions of 4 threads would oversubscribe 6 cores');
  t.equal(resolveInstances('auto', 'cpu', 0, 2), 2, 'intra-op 0 (onnxruntime decides) counts as 1');
  for (const gpu of ['cuda', 'tensorrt', 'webgpu'] as const) t.equal(resolveInstances('auto', gpu, 8, 16), 1, `${gpu}: one session`);
});
