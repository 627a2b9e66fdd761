/**
 * The app's own session pools, as loaded from the manifest (CPU provider), reproduce the reference outputs in
 * ../shared/models/<model>/test_data_set_*: same tensors in, outputs within 1e-4 of output_*.pb (the READMEs'
 * suggested tolerance). The int8 mobilenetv2 matches on every x86 CPU because its sessions ask for exact int8 products
 * where the CPU lacks VNNI (src/core/runner/int8-precision.ts); without that it differs by up to 9 on AVX2.
 */
import t from 'tap';
import type { FastifyInstance } from 'fastify';
import type { Stage } from '../../src/core/stage.js';
import { detectInt8Precision } from '../../src/core/runner/int8-precision.js';
import { buildTestApp } from '../helpers/app.js';
import { maxAbsDiff, modelPath, readTensorProto, sharedTestOptions } from '../helpers/shared.js';

const ATOL = 1e-4;

interface Case {
  /** Model name in the manifest and stage name within it ('main' for single-stage models). */
  model: string;
  stage: string;
  /** Directory under ../shared/models. */
  dir: string;
  set: string;
  outputs: string[];
}

const CASES: Case[] = [
  { model: 'mobilenetv2', stage: 'main', dir: 'mobilenetv2-12-int8', set: 'test_data_set_0', outputs: ['output_0.pb'] },
  { model: 'mobilenetv2', stage: 'main', dir: 'mobilenetv2-12-int8', set: 'test_data_set_1', outputs: ['output_0.pb'] },
  { model: 'yolox-nano', stage: 'main', dir: 'yolox-nano', set: 'test_data_set_0', outputs: ['output_0.pb'] },
  { model: 'ultraface', stage: 'main', dir: 'ultraface-rfb-320', set: 'test_data_set_0', outputs: ['output_0.pb', 'output_1.pb'] },
  { model: 'ocr', stage: 'detector', dir: 'ppocrv4-det', set: 'test_data_set_0', outputs: ['output_0.pb'] },
  { model: 'ocr', stage: 'recognizer', dir: 'ppocrv4-rec', set: 'test_data_set_0', outputs: ['output_0.pb'] },
];

const sharedFiles = CASES.flatMap((c) => [
  `models/${c.dir}/model.onnx`,
  `models/${c.dir}/${c.set}/input_0.pb`,
  ...c.outputs.map((o) => `models/${c.dir}/${c.set}/${o}`),
]);

function stageOf(app: FastifyInstance, model: string, stage: string): Stage {
  const handle = app.ocular.models.list().find((m) => m.name === model);
  const found = handle?.stages.find((s) => s.name === stage);
  if (found === undefined) {
    throw new Error(`no stage ${stage} of ${model} (have ${handle?.stages.map((s) => s.name).join(', ') ?? 'no such model'})`);
  }
  return found;
}

t.test('every model reproduces its reference outputs on the CPU provider', sharedTestOptions(...[...new Set(sharedFiles)]), async (t) => {
  const { app } = await buildTestApp(t, { config: { device: 'cpu' } });
  const int8 = detectInt8Precision();
  t.comment(`int8 products: exact ${int8.exact ? 'on' : 'off'} (${int8.reason})`);

  for (const c of CASES) {
    t.test(`${c.model}${c.stage === 'main' ? '' : `/${c.stage}`} on ${c.dir}/${c.set}`, async (t) => {
      const stage = stageOf(app, c.model, c.stage);
      t.equal(stage.pool.info.provider, 'cpu', 'runs on the CPU provider');
      t.equal(stage.pool.info.exactInt8, int8.exact, 'int8 precision as decided for this CPU');
      const input = readTensorProto(modelPath(c.dir, `${c.set}/input_0.pb`));
      const inputName = stage.pool.info.inputs[0]?.name;
      if (inputName === undefined) throw new Error(`${c.model}: the session reports no input`);
      const outputs = await stage.pool.runTensors({ [inputName]: { data: input.data, dims: input.dims, type: 'float32' } });

      for (const [i, file] of c.outputs.entries()) {
        const expected = readTensorProto(modelPath(c.dir, `${c.set}/${file}`));
        // Match by name where the reference names its tensor, else by position.
        const name = expected.name !== '' && outputs[expected.name] !== undefined ? expected.name : stage.pool.info.outputs[i]?.name;
        const got = name !== undefined ? outputs[name] : undefined;
        if (got === undefined) {
          t.fail(`${file}: no output ${name ?? `#${i}`} (have ${Object.keys(outputs).join(', ')})`);
          continue;
        }
        t.same(got.dims, expected.dims, `${file} (${name}): dims [${expected.dims.join(',')}]`);
        const diff = maxAbsDiff(got.data, expected.data);
        t.ok(diff <= ATOL, `${file} (${name}): max |diff| ${diff.toExponential(2)} <= ${ATOL}`);
      }
    });
  }
});
