/**
 * uint8 input where it cannot be had (src/core/stage-loader.ts, runner/worker.ts): under `gpu`, the default, a GPU
 * plan whose combined model cannot be written keeps float input with a warning and serves, and a session that falls
 * back to the CPU provider gets the float model; under `always` a model whose combined model cannot be written fails
 * to load, with the reason. The CUDA provider is absent here, so the plan falls back to the CPU provider.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { sharedTestOptions } from '../helpers/shared.js';

t.setTimeout(300_000);

t.test('uint8 input where it cannot be had: gpu keeps float input, always fails the load', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx'), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-uint8-fallback-'));
  // A file where the cache dir should be: mkdir under it fails.
  const cacheDir = join(dir, 'not-a-dir');
  writeFileSync(cacheDir, '');
  const entry = (uint8Input: string) => {
    const m = sharedModel('mobilenetv2');
    return { ...m, input: { ...(m['input'] as object), uint8Input }, batching: { ...(m['batching'] as object), tune: 'off' } } as Parameters<typeof writeManifest>[0][number];
  };
  const config = { providers: ['cuda', 'cpu'] as ['cuda', 'cpu'], cacheDir: join(cacheDir, 'cache') };

  const gpu = await buildTestApp(t, { manifestPath: writeManifest([entry('gpu')]), config });
  const model = gpu.app.ocular.models.list()[0];
  t.equal(model?.state, 'READY', 'served');
  t.equal(model?.stages[0]?.pool.info.uint8Input, false, 'with float input');
  const warning = gpu.logs.find('uint8 input unavailable, keeping float input')[0];
  t.match(warning?.['reason'], /combined model not written/, 'and a warning saying why');

  // A cache dir that can be written: the combined model is built, and the session, falling back from CUDA to the CPU
  // provider, gets the float model instead (`gpu`: the prefix gains nothing on the CPU).
  const fallback = await buildTestApp(t, { manifestPath: writeManifest([entry('gpu')]), config: { ...config, cacheDir: join(dir, 'cache') } });
  const info = fallback.app.ocular.models.list()[0]?.stages[0]?.pool.info;
  t.equal(info?.provider, 'cpu');
  t.ok(info?.fallbackReason !== undefined, 'a fallback from CUDA');
  t.equal(info?.uint8Input, false, 'gpu: the CPU provider gets the float model');
  t.same(info?.inputs.map((i) => i.type), ['float32']);

  const always = await buildTestApp(t, { manifestPath: writeManifest([entry('always')]), config, load: false });
  const err = await always.app.ocular.models.loadAll().then(() => undefined, (e: unknown) => e);
  t.match(String(err), /mobilenetv2.*failed to load.*ENOTDIR/, 'always: the load fails, naming the model and the cause');
  t.equal(always.app.ocular.models.list()[0]?.state, 'UNAVAILABLE');
});
