/**
 * Every shared model's reference tensors (../shared/models/<model>/test_data_set_*) through POST /v2/.../infer on
 * the CPU provider: outputs within 1e-4 of output_*.pb, as JSON at batch 1, as binary at batch 1, and binary at
 * batch 8 (mobilenet's test_data_set_1). Image models also take encoded images as a BYTES input. The int8 mobilenet
 * matches on every x86 CPU through its exact int8 products where the CPU lacks VNNI (src/core/runner/int8-precision.ts).
 */
import { readFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { detectInt8Precision } from '../../src/core/runner/int8-precision.js';
import { buildTestApp } from '../helpers/app.js';
import { imagePath, maxAbsDiff, modelPath, readTensorProto, sharedTestOptions } from '../helpers/shared.js';
import { binaryRequest, bytesElements, float32Of, readResponse } from './helpers.js';

const ATOL = 1e-4;

const CASES = [
  { model: 'mobilenetv2', dir: 'mobilenetv2-12-int8', set: 'test_data_set_0', outputs: ['output_0.pb'], json: true },
  { model: 'mobilenetv2', dir: 'mobilenetv2-12-int8', set: 'test_data_set_1', outputs: ['output_0.pb'], json: false },
  { model: 'yolox-nano', dir: 'yolox-nano', set: 'test_data_set_0', outputs: ['output_0.pb'], json: true },
  { model: 'ultraface', dir: 'ultraface-rfb-320', set: 'test_data_set_0', outputs: ['output_0.pb', 'output_1.pb'], json: true },
  { model: 'ocr-det', dir: 'ppocrv4-det', set: 'test_data_set_0', outputs: ['output_0.pb'], json: true },
  { model: 'ocr-rec', dir: 'ppocrv4-rec', set: 'test_data_set_0', outputs: ['output_0.pb'], json: true },
  { model: 'deeplabv3', dir: 'deeplabv3-mobilenetv2-voc', set: 'test_data_set_0', outputs: ['output_0.pb'], json: true },
];

const files = CASES.flatMap((c) => [`models/${c.dir}/model.onnx`, `models/${c.dir}/${c.set}/input_0.pb`, ...c.outputs.map((o) => `models/${c.dir}/${c.set}/${o}`)]);

t.test('shared models reproduce their reference outputs through /v2 infer', sharedTestOptions(...new Set(files), 'images/cat_chelsea.png', 'images/text_no_parking.jpg'), async (t) => {
  const { app } = await buildTestApp(t, { config: { device: 'cpu', manifestWatchMs: 0 } });
  const int8 = detectInt8Precision();
  t.comment(`int8 products: exact ${int8.exact ? 'on' : 'off'} (${int8.reason})`);

  for (const c of CASES) {
    const input = readTensorProto(modelPath(c.dir, `${c.set}/input_0.pb`));
    const meta = (await app.inject({ method: 'GET', url: `/v2/models/${c.model}` })).json<{ inputs: { name: string }[]; outputs: { name: string }[] }>();
    const inputName = meta.inputs[0]?.name as string;
    const expected = c.outputs.map((f) => readTensorProto(modelPath(c.dir, `${c.set}/${f}`)));
    const outName = (i: number) => {
      const e = expected[i];
      return e !== undefined && e.name !== '' && meta.outputs.some((o) => o.name === e.name) ? e.name : (meta.outputs[i]?.name as string);
    };
    const check = (t: Test, got: ArrayLike<number> | undefined, shape: number[] | undefined, i: number, how: string) => {
      const e = expected[i];
      if (e === undefined || got === undefined) return t.fail(`${how}: output ${i} missing`);
      t.same(shape, e.dims, `${how}: ${outName(i)} dims [${e.dims.join(',')}]`);
      const diff = maxAbsDiff(got, e.data);
      t.ok(diff <= ATOL, `${how}: ${outName(i)} max |diff| ${diff.toExponential(2)} <= ${ATOL}`);
    };

    t.test(`${c.model} on ${c.dir}/${c.set} (batch ${input.dims[0]})`, async (t) => {
      if (c.json) {
        const res = await app.inject({
          method: 'POST',
          url: `/v2/models/${c.model}/infer`,
          headers: { 'content-type': 'application/json' },
          payload: JSON.stringify({ inputs: [{ name: inputName, shape: input.dims, datatype: 'FP32', data: Array.from(input.data) }] }),
        });
        t.equal(res.statusCode, 200, `JSON: 200 ${res.statusCode === 200 ? '' : res.body}`);
        const { json } = readResponse(res.rawPayload, undefined);
        t.ok(json.model_version !== undefined, 'model_version is given');
        c.outputs.forEach((_, i) => {
          const o = json.outputs.find((x) => x.name === outName(i));
          check(t, o?.data as number[] | undefined, o?.shape, i, 'JSON');
        });
      }
      const { body, headers } = binaryRequest([{ name: inputName, datatype: 'FP32', shape: input.dims, bytes: Buffer.from(input.data.buffer) }], {
        parameters: { binary_data_output: true },
      });
      const res = await app.inject({ method: 'POST', url: `/v2/models/${c.model}/infer`, headers, payload: body });
      t.equal(res.statusCode, 200, `binary: 200 ${res.statusCode === 200 ? '' : res.body}`);
      const { json, binary } = readResponse(res.rawPayload, res.headers['inference-header-content-length']);
      c.outputs.forEach((_, i) => {
        const name = outName(i);
        const bytes = binary.get(name);
        check(t, bytes !== undefined ? float32Of(bytes) : undefined, json.outputs.find((x) => x.name === name)?.shape, i, 'binary');
      });
    });
  }

  t.test('image models take encoded images as BYTES (Triton-style clients send JPEGs)', async (t) => {
    const cat = readFileSync(imagePath('cat_chelsea.png'));
    const { body, headers } = binaryRequest([{ name: 'image', datatype: 'BYTES', shape: [2], bytes: bytesElements([cat, cat]) }], {
      outputs: [{ name: 'output', parameters: { classification: 3 } }],
    });
    const res = await app.inject({ method: 'POST', url: '/v2/models/mobilenetv2/infer', headers, payload: body });
    t.equal(res.statusCode, 200, res.statusCode === 200 ? '' : res.body);
    const out = readResponse(res.rawPayload, undefined).json.outputs[0];
    t.same(out?.shape, [2, 3], 'one row of 3 per image');
    const first = String((out?.data as string[])[0]);
    t.match(first, /^[-0-9.e]+:285:Egyptian cat$/, `top-1 is Egyptian cat ("${first}")`);

    const v1 = await app.inject({ method: 'POST', url: '/v1/models/mobilenetv2/predict', headers: { 'content-type': 'image/png' }, payload: cat });
    t.equal(v1.json<{ predictions: { label: string }[] }>().predictions[0]?.label, 'Egyptian cat', 'the same answer as /v1');

    const sign = readFileSync(imagePath('text_no_parking.jpg'));
    const ocr = binaryRequest([{ name: 'image', datatype: 'BYTES', shape: [1], bytes: bytesElements([sign]) }]);
    const o = await app.inject({ method: 'POST', url: '/v2/models/ocr/infer', headers: ocr.headers, payload: ocr.body });
    t.equal(o.statusCode, 200, o.statusCode === 200 ? '' : o.body);
    const result = JSON.parse(String((readResponse(o.rawPayload, undefined).json.outputs[0]?.data as string[])[0])) as { lines: { text: string }[] };
    t.ok(result.lines.some((l) => /PARKING/i.test(l.text)), `OCR reads the sign (${result.lines.map((l) => l.text).join(' | ')})`);
  });
});
