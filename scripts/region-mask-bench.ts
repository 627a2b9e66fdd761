/**
 * What masking a detector's padding costs (src/core/runner/region-mask.ts, issue #17): the shared PP-OCRv4 detector
 * and its masked model, run on the same bucket-sized input on the CPU provider, alternated in one process
 * (scripts/lib/ab-runs.ts). Prints each bucket's median run time for both and their ratio.
 *
 *   npx tsx scripts/region-mask-bench.ts [--runs 20] [--threads 1]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { addRegionMask, REGION_INPUT } from '../src/core/runner/region-mask.js';
import { modelPath } from '../test/helpers/shared.js';
import { abRuns } from './lib/ab-runs.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' }, threads: { type: 'string', default: '1' } } });
const options = { executionProviders: ['cpu'], intraOpNumThreads: Number(values.threads) };
const original = readFileSync(modelPath('ppocrv4-det'));
const plain = await ort.InferenceSession.create(original, options);
const masked = await ort.InferenceSession.create(Buffer.from(addRegionMask(original)), options);
console.log('| bucket (H x W) | image (h x w) | plain (ms) | masked (ms) | masked ÷ plain |');
console.log('| --- | --- | ---: | ---: | ---: |');
for (const [H, W, h, w] of [[544, 544, 448, 544], [704, 960, 480, 640], [960, 960, 960, 736]] as const) {
  const x = new Float32Array(3 * H * W);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i) * 0.5;
  const image = new ort.Tensor('float32', x, [1, 3, H, W]);
  const region = new ort.Tensor('float32', Float32Array.from([h, w]), [1, 2]);
  const t = await abRuns(plain, masked, (s) => (s === masked ? { x: image, [REGION_INPUT]: region } : { x: image }), Number(values.runs));
  console.log(`| ${H} x ${W} | ${h} x ${w} | ${t.a.toFixed(1)} | ${t.b.toFixed(1)} | ${(t.b / t.a).toFixed(3)} |`);
}
