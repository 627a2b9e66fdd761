/**
 * The in-process loop Ocular is compared with (issue #4): what a user could write with no HTTP at all, built
 * from Ocular's own preprocessing (prepareImage, sharp) and runner (the worker-thread session pool). Batches of
 * `--batch` photos, round-robin; the next batch is decoded and resized on libuv's threads while the current one
 * runs in the worker, so preprocessing overlaps inference.
 *
 *   npx tsx scripts/in-process-loop.ts [--seconds 10] [--batch 8] [--intra-op-threads N] [--latency-samples 40]
 *
 * Prints one JSON line: images per second and CPU time per image (all threads) over the timed part, and the latency of single images one at a time
 * (decode + preprocess + run, unloaded).
 */
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { intraOpThreadsOf } from '../src/config/config.js';
import { loadManifest } from '../src/config/manifest.js';
import { createSessionPool, type SessionPool } from '../src/core/runner/session-pool.js';
import type { PreparedImage } from '../src/core/types.js';
import { normalizeParamsOf } from '../src/core/runner/normalize.js';
import { prepareImage, type DecodeLimits } from '../src/core/preprocess/image.js';
import { configureSharp } from '../src/core/preprocess/sharp-config.js';
import { loadPhotos } from './lib/photos.js';
import { summarize } from './lib/stats.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    batch: { type: 'string', default: '8' },
    'intra-op-threads': { type: 'string', default: '0' },
    'latency-samples': { type: 'string', default: '40' },
    manifest: { type: 'string', default: 'test/fixtures/shared.manifest.json' },
    model: { type: 'string', default: 'mobilenetv2' },
    images: { type: 'string' },
  },
});

const shared = process.env['OCULAR_SHARED_DIR'] ?? '../shared';
const photos = loadPhotos(resolve(values.images ?? join(shared, 'images')));
const loaded = await loadManifest(values.manifest);
const entry = loaded.manifest.models.find((m) => m.name === values.model);
if (entry === undefined || entry.task !== 'image-classification') {
  throw new Error(`${values.model} is not a classification model in ${values.manifest}`);
}
const spec = entry.input;
const batch = Number(values.batch);
const intra = Number(values['intra-op-threads']);
const limits: DecodeLimits = { maxInputPixels: 40_000_000, allowedFormats: new Set(['jpeg', 'png', 'webp']) };

configureSharp();
const pool: SessionPool = await createSessionPool({
  modelName: entry.name,
  modelPath: resolve(loaded.baseDir, entry.source),
  providers: ['cpu'],
  fallbackToCpu: false,
  gpuDeviceId: 0,
  instances: 1,
  // Ocular's own resolution of the setting (0 = its default), so both run with the same thread count.
  intraOpNumThreads: intraOpThreadsOf({ intraOpThreads: intra }),
  interOpNumThreads: 1,
  normalize: normalizeParamsOf(spec),
});

let next = 0;
const prepareBatch = (): Promise<PreparedImage[]> =>
  Promise.all(Array.from({ length: batch }, () => prepareImage(photos[next++ % photos.length]!.bytes, spec, limits)));
const run = (items: PreparedImage[]) => pool.runImages({ items, tensorHeight: spec.height, tensorWidth: spec.width });

/** Runs the overlapped loop for `seconds`; returns images per second. */
async function loop(seconds: number): Promise<{ imagesPerSecond: number; cpuMsPerImage: number }> {
  let images = 0;
  let current = await prepareBatch();
  const started = performance.now();
  const cpu = process.cpuUsage(); // every thread of the process: main, libuv (sharp) and the runner's worker
  const until = started + seconds * 1000;
  while (performance.now() < until) {
    const upcoming = prepareBatch(); // decode the next batch while this one runs
    await run(current);
    images += current.length;
    current = await upcoming;
  }
  const used = process.cpuUsage(cpu);
  return { imagesPerSecond: images / ((performance.now() - started) / 1000), cpuMsPerImage: (used.user + used.system) / 1000 / images };
}

await loop(Number(values.warmup));
const { imagesPerSecond, cpuMsPerImage } = await loop(Number(values.seconds));

const latencies: number[] = [];
for (let i = 0; i < Number(values['latency-samples']); i++) {
  const t0 = performance.now();
  const one = await prepareImage(photos[i % photos.length]!.bytes, spec, limits);
  await run([one]);
  latencies.push(performance.now() - t0);
}
await pool.close();
process.stdout.write(`${JSON.stringify({ imagesPerSecond, cpuMsPerImage, batch, singleImageLatencyMs: summarize(latencies) })}\n`);
