/**
 * What onnxruntime's CPU arena keeps after a huge raw-tensor run (issue 18, the answers case): two runs of the shared
 * ppocrv4-rec recogniser on a [1, 3, 48, --width] input in this process, with the arena on or off (onnxruntime's
 * session option enableCpuMemArena), printing RSS before, right after each run, and
 * 0.5 s after each run. `npx tsx scripts/hardening/arena.ts on|off [width, default 16320]`
 */
import * as ort from 'onnxruntime-node';
import { modelPath } from '../../test/helpers/shared.js';
const arena = process.argv[2] !== 'off';
const width = Number(process.argv[3] ?? 16320);
const mib = (b: number) => Math.round(b / 1048576);
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
