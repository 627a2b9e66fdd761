/**
 * A detector's padding made invisible (src/core/runner/region-mask.ts, issue #17): the rewritten model computes for
 * an image at the top-left of a larger tensor what the original computes for the image alone, whatever the padding
 * holds; operators the masks do not cover are refused; the region a worker feeds.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { addRegionMask, MaskError, REGION_INPUT, regionData } from '../../../src/core/runner/region-mask.js';
import { imagePath, modelPath, sharedTestOptions } from '../../helpers/shared.js';
import { encodeModel, FLOAT } from '../../v2/helpers.js';

const DET = 'models/ppocrv4-det/model.onnx';
const CPU = { executionProviders: ['cpu'], intraOpNumThreads: 1 } as const;

t.test('the region a worker feeds: each item, then the whole tensor for padding rows', async (t) => {
  t.same([...regionData([{ width: 640, height: 480 }, { width: 320, height: 704 }], 3, 704, 960)], [480, 640, 704, 320, 704, 960]);
});

t.test("a global average becomes the mean over each row's region (opset 13: axes as inputs)", async (t) => {
  const bytes = encodeModel([{ opType: 'GlobalAveragePool', input: ['x'], output: ['y'] }], [['x', FLOAT, ['N', 2, 'H', 'W']]], [['y', FLOAT, ['N', 2, 1, 1]]]);
  const session = await ort.InferenceSession.create(Buffer.from(addRegionMask(bytes)), CPU);
  t.same(session.inputNames, ['x', REGION_INPUT], 'the region follows the image input');
  // Two rows of 2 channels, 4 x 6: each value its own position, the padding 1000.
  const [H, W] = [4, 6];
  const x = new Float32Array(2 * 2 * H * W).fill(1000);
  const regions = [[2, 3], [4, 6]] as const;
  const expected: number[] = [];
  regions.forEach(([h, w], n) => {
    for (let c = 0; c < 2; c++) {
      let sum = 0;
      for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
        const v = n * 100 + c * 10 + i * W + j;
        x[((n * 2 + c) * H + i) * W + j] = v;
        sum += v;
      }
      expected.push(sum / (h * w));
    }
  });
  const out = await session.run({ x: new ort.Tensor('float32', x, [2, 2, H, W]), [REGION_INPUT]: new ort.Tensor('float32', Float32Array.from(regions.flat()), [2, 2]) });
  const y = [...(out['y']?.data as Float32Array)];
  y.forEach((v, i) => t.ok(Math.abs(v - (expected[i] as number)) < 1e-3, `row ${i >> 1} channel ${i & 1}: ${v} = ${expected[i]}`));
});

t.test('operators that mix positions beyond what the masks cover are refused', async (t) => {
  const model = (opType: string, inputs: string[] = ['x']) => encodeModel([{ opType, input: inputs, output: ['y'] }], [['x', FLOAT, ['N', 3, 'H', 'W']]], [['y', FLOAT, ['N', 3, 'H', 'W']]]);
  t.throws(() => addRegionMask(model('Transpose')), MaskError, 'Transpose');
  t.throws(() => addRegionMask(model('MatMul', ['x', 'x'])), MaskError, 'MatMul');
  t.throws(() => addRegionMask(model('Resize', ['x'])), /Resize other than nearest, asymmetric, floor/, "Resize with onnx's defaults (half_pixel)");
  t.doesNotThrow(() => addRegionMask(model('Relu')), 'a pointwise operator is kept as it is');
  const masked = addRegionMask(model('Relu'));
  t.throws(() => addRegionMask(masked), /already holds the name ocular_mask\//, 'a model is masked once');
});

t.test('the shared detector: the same probability map inside the image, whatever the padding holds', sharedTestOptions(DET, 'images/text_no_parking.jpg'), async (t) => {
  const original = readFileSync(modelPath('ppocrv4-det'));
  const plain = await ort.InferenceSession.create(original, CPU);
  const masked = await ort.InferenceSession.create(Buffer.from(addRegionMask(original)), CPU);
  // A 640 x 480 photo, normalised as the manifest's detector input does, alone and at the top-left of a 960 x 704 bucket.
  const [h, w, H, W] = [480, 640, 704, 960];
  const { data } = await sharp(imagePath('text_no_parking.jpg')).removeAlpha().resize(w, h, { fit: 'fill' }).raw().toBuffer({ resolveWithObject: true });
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const tensor = (th: number, tw: number, fill: number) => {
    const x = new Float32Array(3 * th * tw).fill(fill);
    for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let i = 0; i < w; i++) x[(c * th + y) * tw + i] = ((data[(y * w + i) * 3 + c] as number) / 255 - (mean[c] as number)) / (std[c] as number);
    return new ort.Tensor('float32', x, [1, 3, th, tw]);
  };
  const mapOf = async (s: ort.InferenceSession, feeds: Record<string, ort.Tensor>) => (await s.run(feeds))[s.outputNames[0] as string]?.data as Float32Array;
  const reference = await mapOf(plain, { x: tensor(h, w, 0) });
  const compare = (map: Float32Array, width: number) => {
    let max = 0;
    let crossed = 0;
    for (let y = 0; y < h; y++) for (let i = 0; i < w; i++) {
      const a = reference[y * w + i] as number;
      const b = map[y * width + i] as number;
      max = Math.max(max, Math.abs(a - b));
      if (a > 0.3 !== b > 0.3) crossed++;
    }
    return { max, crossed };
  };
  const region = new ort.Tensor('float32', Float32Array.from([h, w]), [1, 2]);
  const unmasked = compare(await mapOf(plain, { x: tensor(H, W, 0) }), W);
  t.ok(unmasked.max > 0.1, `without the mask the padding moves the map inside the image (max |diff| ${unmasked.max.toFixed(3)}, ${unmasked.crossed} pixels across 0.3)`);
  for (const fill of [0, 0.7, -2]) {
    const got = compare(await mapOf(masked, { x: tensor(H, W, fill), [REGION_INPUT]: region }), W);
    t.ok(got.max < 1e-4, `padding of ${fill}: max |diff| inside the image ${got.max.toExponential(2)}`);
    t.equal(got.crossed, 0, `padding of ${fill}: no pixel crosses the 0.3 threshold`);
  }
  const alone = compare(await mapOf(masked, { x: tensor(h, w, 0), [REGION_INPUT]: region }), w);
  t.ok(alone.max < 1e-4, `the image alone through the masked model: max |diff| ${alone.max.toExponential(2)}`);
});
