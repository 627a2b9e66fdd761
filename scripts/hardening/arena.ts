/**
 * onnxruntime's CPU arena (session option enableCpuMemArena), issue 18's answers case. Two modes:
 *
 * - `on|off [width, default 16320]`: what the arena keeps after a huge raw-tensor run. Two runs of the shared
 *   ppocrv4-rec recogniser on a [1, 3, 48, width] input in this process, printing RSS before, right after each run,
 *   and 0.5 s after each run.
 * - `bench [--runs 30] [--threads 1]`: what the arena saves per run at the shapes the server runs every day: for each
 *   of the OCR detector (a 4:3 photo), the OCR recogniser (a batch of 6 lines at the narrowest width and one wide
 *   line), mobilenetv2 and yolox-nano, one session with the arena and one without, run alternately (A B B A ...) so
 *   that a neighbour's load hits both alike. Prints each shape's median run time per arena setting and their ratio.
 *
 *   npx tsx scripts/hardening/arena.ts on|off [width]
 *   npx tsx scripts/hardening/arena.ts bench [--runs 30] [--threads 1]
 */
import * as ort from 'onnxruntime-node';
import { parseArgs } from 'node:util';
import { modelPath } from '../../test/helpers/shared.js';
import { abRuns } from '../lib/ab-runs.js';

const mib = (b: number) => Math.round(b / 1048576);

async function keeps(arena: boolean, width: number): Promise<void> {
  const s = await ort.InferenceSession.create(modelPath('ppocrv4-rec'), { enableCpuMemArena: arena, intraOpNumThreads: 1, executionProviders: ['cpu'] });
  const rss0 = process.memoryUsage().rss;
  const name = s.inputNames[0] as string;
  for (let r = 0; r < 2; r++) {
    const x = new Float32Array(3 * 48 * width).fill(0.1);
    const t0 = performance.now();
    const ms = await s.run({ [name]: new ort.Tensor('float32', x, [1, 3, 48, width]) }).then(() => performance.now() - t0);
    // Right after the run: its outputs are garbage now, but not yet collected.
    const rssPeakish = process.memoryUsage().rss;
    await new Promise((r) => setTimeout(r, 500));
    console.log(JSON.stringify({ arena, width, run: r, ms: Math.round(ms), rssBefore: mib(rss0), rssAfterRun: mib(rssPeakish), rssAfter: mib(process.memoryUsage().rss) }));
  }
}

/** The shapes of a normal day: model, input dims. Pixel values do not change the work of these models. */
const SHAPES: { model: string; dims: number[] }[] = [
  { model: 'ppocrv4-det', dims: [1, 3, 736, 960] },
  { model: 'ppocrv4-rec', dims: [6, 3, 48, 320] },
  { model: 'ppocrv4-rec', dims: [1, 3, 48, 960] },
  { model: 'mobilenetv2-12-int8', dims: [8, 3, 224, 224] },
  { model: 'yolox-nano', dims: [1, 3, 416, 416] },
];

async function bench(runs: number, threads: number): Promise<void> {
  console.log(`| model | input | median run, arena on (ms) | arena off (ms) | off ÷ on |`);
  console.log(`| --- | --- | ---: | ---: | ---: |`);
  for (const { model, dims } of SHAPES) {
    const make = (enableCpuMemArena: boolean) =>
      ort.InferenceSession.create(modelPath(model), { enableCpuMemArena, intraOpNumThreads: threads, executionProviders: ['cpu'] });
    const sessions = { on: await make(true), off: await make(false) };
    const name = sessions.on.inputNames[0] as string;
    const x = new Float32Array(dims.reduce((a, b) => a * b, 1));
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i) * 0.5;
    const feeds = { [name]: new ort.Tensor('float32', x, dims) };
    const { a: on, b: off } = await abRuns(sessions.on, sessions.off, () => feeds, runs);
    console.log(`| ${model} | [${dims.join(',')}] | ${on.toFixed(2)} | ${off.toFixed(2)} | ${(off / on).toFixed(3)} |`);
    await sessions.on.release();
    await sessions.off.release();
  }
}

const mode = process.argv[2];
if (mode === 'bench') {
  const { values } = parseArgs({ args: process.argv.slice(3), options: { runs: { type: 'string', default: '30' }, threads: { type: 'string', default: '1' } } });
  await bench(Number(values.runs), Number(values.threads));
} else if (mode === 'on' || mode === 'off') {
  await keeps(mode === 'on', Number(process.argv[3] ?? 16320));
} else {
  throw new Error('usage: arena.ts on|off [width] | bench [--runs 30] [--threads 1]');
}
