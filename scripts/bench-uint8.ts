/**
 * uint8 input (manifest `input.uint8Input`, src/core/runner/uint8-prefix.ts) against float input, on the CPU
 * provider: what the figures in docs/PERFORMANCE.md ("uint8 input") come from. Two parts, each in interleaved pairs so
 * that a noisy neighbour hits both sides alike:
 *
 * 1. The worker's side, in this process: for each model, one real photo prepared as the server prepares it, then
 *    per batch either normalizeInto + the original model (float32 feed) or copyPixelsInto + the model with the
 *    prefix (uint8 feed); wall and CPU time per image (CPU of this process: onnxruntime's threads included), and
 *    the bytes handed to the session per image (what a GPU provider copies to the device).
 * 2. The server: `dist/src/main.js` with a one-model manifest, `always` and `off`, closed loop at --connections;
 *    requests/s and CPU per request (the server's process_cpu_seconds_total over its answered requests).
 *
 *   npx tsx scripts/bench-uint8.ts [--rounds 2] [--duration 6] [--connections 8] [--models yolox-nano,mobilenetv2] [--out PATH]
 *
 * Needs the shared models and photos ($OCULAR_SHARED_DIR, default ../shared) and a build (dist/: npm run build).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { intraOpThreadsOf } from '../src/config/config.js';
import { InputSpecSchema, type InputSpec } from '../src/config/input-spec.js';
import { prepareImage } from '../src/core/preprocess/image.js';
import { configureSharp } from '../src/core/preprocess/sharp-config.js';
import { copyPixelsInto, normalizeInto, normalizeParamsOf } from '../src/core/runner/normalize.js';
import { addUint8Prefix, PIXELS_INPUT } from '../src/core/runner/uint8-prefix.js';
import { closedLoop, predictPath } from './lib/load.js';
import { loadPhotos, prepareBody } from './lib/photos.js';
import { diffMetrics, scrapeMetrics } from './lib/prom.js';
import { freePort, startOptions, startServer } from './lib/server.js';
import { fmt, spread } from './lib/stats.js';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    duration: { type: 'string', default: '6' },
    connections: { type: 'string', default: '8' },
    models: { type: 'string', default: 'yolox-nano,mobilenetv2' },
    out: { type: 'string', default: join(root, '.cache/bench/uint8') },
  },
});
const rounds = Number(values.rounds);
const durationS = Number(values.duration);
const connections = Number(values.connections);
const names = values.models.split(',');
const log = (msg: string): void => void process.stderr.write(`[uint8 ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

const sharedDir = resolve(root, process.env['OCULAR_SHARED_DIR'] ?? '../shared');
const fixture = join(root, 'test/fixtures/shared.manifest.json');
const entries = (JSON.parse(readFileSync(fixture, 'utf8')) as { models: Record<string, unknown>[] }).models;
const entryOf = (name: string): Record<string, unknown> => {
  const e = entries.find((m) => m['name'] === name);
  if (e === undefined) throw new Error(`${name} is not in ${fixture}`);
  return { ...e, source: resolve(join(root, 'test/fixtures'), String(e['source'])), labels: resolve(join(root, 'test/fixtures'), String(e['labels'])) };
};
const intraOp = intraOpThreadsOf({ intraOpThreads: 0 });
configureSharp(['jpeg', 'png', 'webp']);

interface WorkerSide {
  model: string;
  batch: number;
  float: { wallMsPerImage: number; cpuMsPerImage: number };
  uint8: { wallMsPerImage: number; cpuMsPerImage: number };
  bytesPerImage: { float: number; uint8: number };
}

async function workerSide(name: string): Promise<WorkerSide[]> {
  const entry = entryOf(name);
  const spec: InputSpec = InputSpecSchema.parse(entry['input']);
  const params = normalizeParamsOf(spec);
  const modelPath = String(entry['source']);
  const prefixed = addUint8Prefix(readFileSync(modelPath), params, spec.name);
  const options = { intraOpNumThreads: intraOp, interOpNumThreads: 1, extra: { 'session.intra_op.allow_spinning': '0' } };
  const floatSession = await ort.InferenceSession.create(modelPath, options);
  const uint8Session = await ort.InferenceSession.create(prefixed.model, options);
  const photo = readFileSync(join(sharedDir, 'images/street_pedestrians_vtest_f300.jpg'));
  const prepared = await prepareImage(photo, spec, { maxInputPixels: 100e6, allowedFormats: new Set(['jpeg']) });
  const { width: w, height: h } = prepared;
  const rows: WorkerSide[] = [];
  for (const batch of [1, 8]) {
    const floats = new Float32Array(batch * 3 * h * w);
    const bytes = new Uint8Array(batch * 3 * h * w);
    const runFloat = async () => {
      for (let i = 0; i < batch; i++) normalizeInto(prepared.pixels, w, h, params, floats, i, h, w);
      const dims = params.layout === 'NCHW' ? [batch, 3, h, w] : [batch, h, w, 3];
      await floatSession.run({ [prefixed.original.name]: new ort.Tensor('float32', floats, dims) });
    };
    const runUint8 = async () => {
      for (let i = 0; i < batch; i++) copyPixelsInto(prepared.pixels, w, h, bytes, i, h, w, undefined);
      await uint8Session.run({ [PIXELS_INPUT]: new ort.Tensor('uint8', bytes, [batch, h, w, 3]) });
    };
    await runFloat();
    await runUint8();
    const times = { float: { wall: [] as number[], cpu: [] as number[] }, uint8: { wall: [] as number[], cpu: [] as number[] } };
    const reps = Math.max(3, Math.round(24 / batch));
    for (let r = 0; r < reps; r++) {
      for (const [key, run] of (r % 2 === 0 ? [['float', runFloat], ['uint8', runUint8]] : [['uint8', runUint8], ['float', runFloat]]) as [keyof typeof times, () => Promise<void>][]) {
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        await run();
        const wall = performance.now() - t0;
        const c = process.cpuUsage(c0);
        times[key].wall.push(wall / batch);
        times[key].cpu.push((c.user + c.system) / 1000 / batch);
      }
    }
    const med = (v: number[]) => spread(v).median;
    rows.push({
      model: name,
      batch,
      float: { wallMsPerImage: med(times.float.wall), cpuMsPerImage: med(times.float.cpu) },
      uint8: { wallMsPerImage: med(times.uint8.wall), cpuMsPerImage: med(times.uint8.cpu) },
      bytesPerImage: { float: 3 * h * w * 4, uint8: 3 * h * w },
    });
    const last = rows[rows.length - 1] as WorkerSide;
    log(`${name} batch ${batch} ${w}x${h}: float ${fmt(last.float.wallMsPerImage, 2)} ms/image (CPU ${fmt(last.float.cpuMsPerImage, 2)}), uint8 ${fmt(last.uint8.wallMsPerImage, 2)} ms/image (CPU ${fmt(last.uint8.cpuMsPerImage, 2)})`);
  }
  await floatSession.release();
  await uint8Session.release();
  return rows;
}

interface ServerSide {
  model: string;
  connections: number;
  float: { rps: number[]; cpuMsPerRequest: number[] };
  uint8: { rps: number[]; cpuMsPerRequest: number[] };
}

async function serverSide(name: string, workDir: string): Promise<ServerSide> {
  const mainJs = join(root, 'dist/src/main.js');
  if (!existsSync(mainJs)) throw new Error('dist/src/main.js missing: npm run build');
  const manifests = Object.fromEntries(
    (['float', 'uint8'] as const).map((key) => {
      const e = entryOf(name);
      const model = { ...e, input: { ...(e['input'] as object), uint8Input: key === 'uint8' ? 'always' : 'off' }, batching: { ...(e['batching'] as object), tune: 'off' } };
      const path = join(workDir, `${name}-${key}.manifest.json`);
      writeFileSync(path, JSON.stringify({ models: [model] }));
      return [key, path];
    }),
  ) as Record<'float' | 'uint8', string>;
  const bodies = loadPhotos(join(sharedDir, 'images')).map((p) => prepareBody(p, 'raw'));
  const result: ServerSide = { model: name, connections, float: { rps: [], cpuMsPerRequest: [] }, uint8: { rps: [], cpuMsPerRequest: [] } };
  for (let r = 0; r < rounds; r++) {
    for (const key of r % 2 === 0 ? (['float', 'uint8'] as const) : (['uint8', 'float'] as const)) {
      const port = await freePort();
      const env = { ...process.env, OCULAR_LOG_LEVEL: 'warn', OCULAR_DEVICE: 'cpu', OCULAR_PLAYGROUND: 'false', HOST: '127.0.0.1', PORT: String(port), OCULAR_MANIFEST: manifests[key], OCULAR_CACHE_DIR: join(workDir, 'cache') };
      const server = await startServer({ name: `${name}-${key}`, args: [...startOptions(join(root, 'package.json')), mainJs], env, readyPath: '/readyz', port, cwd: root });
      try {
        const target = { url: server.url, path: predictPath(name), bodies };
        await closedLoop(target, connections, 1, 'lean');
        const before = await scrapeMetrics(server.url);
        const res = await closedLoop(target, connections, durationS, 'lean');
        const after = await scrapeMetrics(server.url);
        result[key].rps.push(res.throughputRps);
        if (before && after) result[key].cpuMsPerRequest.push(diffMetrics(before, after, name).cpuMsPerRequest);
        log(`${name} round ${r + 1} ${key}: ${fmt(res.throughputRps)} req/s, CPU ${fmt(result[key].cpuMsPerRequest.at(-1) ?? NaN, 2)} ms/request`);
      } finally {
        await server.stop();
      }
    }
  }
  return result;
}

const workDir = resolve(`${values.out}.work`);
mkdirSync(workDir, { recursive: true });
const worker: WorkerSide[] = [];
for (const name of names) worker.push(...(await workerSide(name)));
const servers: ServerSide[] = [];
for (const name of names) servers.push(await serverSide(name, workDir));

const lines = [
  `# uint8 input against float input (CPU provider, ${intraOp} intra-op threads)`,
  '',
  '| model | batch | float ms/image (CPU) | uint8 ms/image (CPU) | bytes/image float → uint8 |',
  '|---|---:|---:|---:|---:|',
  ...worker.map((w) => `| ${w.model} | ${w.batch} | ${fmt(w.float.wallMsPerImage, 2)} (${fmt(w.float.cpuMsPerImage, 2)}) | ${fmt(w.uint8.wallMsPerImage, 2)} (${fmt(w.uint8.cpuMsPerImage, 2)}) | ${w.bytesPerImage.float} → ${w.bytesPerImage.uint8} |`),
  '',
  `| model | conns | float req/s | uint8 req/s | float CPU ms/req | uint8 CPU ms/req |`,
  '|---|---:|---:|---:|---:|---:|',
  ...servers.map((s) => `| ${s.model} | ${s.connections} | ${s.float.rps.map((v) => fmt(v)).join(', ')} | ${s.uint8.rps.map((v) => fmt(v)).join(', ')} | ${s.float.cpuMsPerRequest.map((v) => fmt(v, 2)).join(', ')} | ${s.uint8.cpuMsPerRequest.map((v) => fmt(v, 2)).join(', ')} |`),
];
process.stdout.write(`${lines.join('\n')}\n`);
writeFileSync(`${values.out}.md`, `${lines.join('\n')}\n`);
writeFileSync(`${values.out}.json`, `${JSON.stringify({ date: new Date().toISOString(), intraOp, rounds, durationS, worker, servers }, null, 2)}\n`);
