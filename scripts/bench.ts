/**
 * The benchmark of issue #4: Ocular against the in-process loop (Ocular's own preprocessing and runner, no HTTP)
 * and against the hand-written handler (scripts/naive-handler.ts), on one machine, in one run, with the same
 * photos, model (mobilenetv2-12-int8) and thread settings, measured as interleaved rounds (in a balanced order,
 * balancedOrder) so that a noisy neighbour hits every contender alike; medians with min and max. Then: /healthz
 * latency while saturated, open-loop latency at 60 % of Ocular's capacity, time to ready for the default manifest, RSS
 * after N and 10N requests, yolox-nano dynamic batching against batch 1, and preprocessing cost per image against
 * sharp's own decode + resize. Prints a Markdown report (every ratio against its target) and writes it, with the
 * raw numbers as JSON, to --out.
 *
 *   npm run bench                 # full run, about 15 minutes on 2 cores
 *   npm run bench -- --quick      # smoke run, about 2 minutes
 *   npm run bench -- --help
 *
 * Needs the shared models and photos ($OCULAR_SHARED_DIR, default ../shared) and a build (dist/), which it makes
 * when missing or older than src/. All traffic goes to 127.0.0.1. Thread settings apply to every contender:
 * --intra-op-threads, and UV_THREADPOOL_SIZE / MALLOC_ARENA_MAX from the environment, passed through.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { intraOpThreadsOf } from '../src/config/config.js';
import { parseManifest } from '../src/config/manifest.js';
import { normalizeInto, normalizeParamsOf } from '../src/core/runner/normalize.js';
import { prepareImage } from '../src/core/preprocess/image.js';
import { configureSharp } from '../src/core/preprocess/sharp-config.js';
import { closedLoop, LOAD_CLIENTS, openLoop, predictPath, probeLatency, type LoadResult, type LoadTarget } from './lib/load.js';
import { loadPhotos, prepareBody, type Photo } from './lib/photos.js';
import { diffMetrics, scrapeMetrics, type ServerSplit } from './lib/prom.js';
import { cpuSecondsOf, freePort, runJson, startOptions, startServer, type RunningServer } from './lib/server.js';
import { balancedOrder, fmt, fmtSpread, spread, type LatencySummary, type Spread } from './lib/stats.js';

const HELP = `npm run bench -- [options]

Options
  --quick               smoke run: 2 rounds, short runs, small RSS counts (about 2 minutes)
  --rounds N            interleaved rounds (default 5; at least 5 for figures that count)
  --duration S          seconds per saturated run (default 10)
  --c1-duration S       seconds per single-connection run (default 5)
  --open-duration S     seconds of the open-loop run (default 20)
  --rss-requests A,B    requests before the two RSS readings (default 2000,20000)
  --rss-seconds S       time limit of the RSS part (default 240): the second reading is taken then at the latest
  --yolox-rounds N      rounds of the yolox-nano batching comparison (default 6: each of its three servers in
                        each place, and after each other server, twice)
  --intra-op-threads N  onnxruntime intra-op threads for every contender (default: Ocular's default)
  --client C            closed-loop load generator: lean (default: prebuilt requests, about 0.2 ms of CPU
                        per request) or autocannon (about 0.55 ms); it runs in this process, on the same
                        cores as the contenders, and only the HTTP contenders pay for it
  --skip LIST           parts to skip, comma-separated: prep,ready,yolox,rss,open,nice10 (the OCULAR_COMPUTE_NICE=10 contender)
  --out PATH            report path without extension (default .cache/bench/bench): PATH.md and PATH.json
  -h, --help            this text
`;

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    'c1-duration': { type: 'string' },
    'open-duration': { type: 'string' },
    'rss-requests': { type: 'string' },
    'rss-seconds': { type: 'string' },
    'yolox-rounds': { type: 'string' },
    'intra-op-threads': { type: 'string', default: '0' },
    client: { type: 'string', default: 'lean' },
    skip: { type: 'string', default: '' },
    out: { type: 'string', default: join(root, '.cache/bench/bench') },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const quick = values.quick;
function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}
const opt = {
  rounds: Number(values.rounds ?? (quick ? 2 : 5)),
  durationS: Number(values.duration ?? (quick ? 4 : 10)),
  c1DurationS: Number(values['c1-duration'] ?? (quick ? 3 : 5)),
  openDurationS: Number(values['open-duration'] ?? (quick ? 6 : 20)),
  rss: (values['rss-requests'] ?? (quick ? '300,1500' : '2000,20000')).split(',').map(Number) as [number, number],
  rssSeconds: Number(values['rss-seconds'] ?? (quick ? 60 : 240)),
  yoloxRounds: Number(values['yolox-rounds'] ?? (quick ? 1 : 6)),
  intraOp: Number(values['intra-op-threads']),
  client: LOAD_CLIENTS.find((c) => c === values.client) ?? fail(`--client must be ${LOAD_CLIENTS.join(' or ')}`),
  skip: new Set(values.skip.split(',').filter((s) => s.length > 0)),
};
const log = (msg: string): void => void process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

// ---------------------------------------------------------------------------------------------------------------
// Inputs: photos, manifests, a fresh build.

const sharedDir = resolve(root, process.env['OCULAR_SHARED_DIR'] ?? '../shared');
const photos = loadPhotos(join(sharedDir, 'images'));
const rawBodies = photos.map((p) => prepareBody(p, 'raw'));
const workDir = resolve(`${values.out}.work`);
mkdirSync(workDir, { recursive: true });

const fixture = join(root, 'test/fixtures/shared.manifest.json');
const fixtureJson = JSON.parse(readFileSync(fixture, 'utf8')) as { models: Record<string, unknown>[] };
/** A manifest with one model of the shared fixture, paths made absolute, batching overridden. */
function manifestWith(name: string, batching: Record<string, number | string>): string {
  const entry = fixtureJson.models.find((m) => m['name'] === name);
  if (entry === undefined) throw new Error(`${name} is not in ${fixture}`);
  const abs = (p: unknown) => resolve(join(root, 'test/fixtures'), String(p));
  const model = { ...entry, source: abs(entry['source']), labels: abs(entry['labels']), batching: { ...(entry['batching'] as object), ...batching } };
  parseManifest({ models: [model] });
  const path = join(workDir, `${name}-${Object.values(batching).join('-')}.manifest.json`);
  writeFileSync(path, JSON.stringify({ models: [model] }, null, 2));
  return path;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}
const mainJs = join(root, 'dist/src/main.js');
/** Ocular is started as `npm start` starts it: the same node options (package.json). */
const ocularNodeOptions = startOptions(join(root, 'package.json'));
if (!existsSync(mainJs) || statSync(mainJs).mtimeMs < newestMtime(join(root, 'src'))) {
  log('dist/ is missing or older than src/: building');
  execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
}

// Same environment for every contender: thread settings pass through, logs quiet.
const childEnv: NodeJS.ProcessEnv = { ...process.env, OCULAR_LOG_LEVEL: 'warn', OCULAR_DEVICE: 'cpu' };
const intraOp = opt.intraOp > 0 ? opt.intraOp : undefined;
if (intraOp !== undefined) childEnv['OCULAR_INTRA_OP_THREADS'] = String(intraOp);
/**
 * Like for like (issue #20): every contender's node runs with the options `npm start` gives Ocular, so that no ratio
 * measures a V8 heap setting. The handler and the in-process loop load through tsx (TypeScript sources); Ocular runs
 * its build. Stated beside the table.
 */
const tsxArgs = [...ocularNodeOptions, '--import', 'tsx'];

async function startOcular(manifest: string | undefined, name = 'ocular', extraEnv: NodeJS.ProcessEnv = {}): Promise<RunningServer> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...childEnv, ...extraEnv, HOST: '127.0.0.1', PORT: String(port) };
  if (manifest !== undefined) env['OCULAR_MANIFEST'] = manifest;
  else delete env['OCULAR_MANIFEST'];
  return startServer({ name, args: [...ocularNodeOptions, mainJs], env, readyPath: '/readyz', port, cwd: root });
}

async function startHandler(): Promise<RunningServer> {
  const port = await freePort();
  const args = [...tsxArgs, join(root, 'scripts/naive-handler.ts'), '--port', String(port), '--model', join(sharedDir, 'models/mobilenetv2-12-int8')];
  // The same intra-op thread count as Ocular resolves (the handler keeps onnxruntime's other defaults).
  args.push('--intra-op-threads', String(intraOpThreadsOf({ intraOpThreads: opt.intraOp })));
  return startServer({ name: 'handler', args, env: childEnv, readyPath: '/healthz', port, cwd: root });
}

interface InProcessResult {
  imagesPerSecond: number;
  cpuMsPerImage: number;
  singleImageLatencyMs: LatencySummary;
}
function runInProcess(seconds: number, latencySamples: number): Promise<InProcessResult> {
  const args = [...tsxArgs, join(root, 'scripts/in-process-loop.ts'), '--seconds', String(seconds), '--warmup', '2', '--latency-samples', String(latencySamples), '--manifest', fixture];
  if (intraOp !== undefined) args.push('--intra-op-threads', String(intraOp));
  return runJson<InProcessResult>(args, { ...childEnv, OCULAR_SHARED_DIR: sharedDir }, 120_000);
}

interface Measured {
  result: LoadResult;
  /** Server process CPU (all threads) per 2xx answer, ms. */
  cpuMsPerRequest: number;
  /** This process's CPU (the load generator, on the same cores) per 2xx answer, ms. */
  clientCpuMsPerRequest: number;
  healthz?: LatencySummary;
  server?: ServerSplit;
}
async function measure(server: RunningServer, target: LoadTarget, connections: number, seconds: number, probe: boolean): Promise<Measured> {
  await closedLoop(target, connections, 1.5, opt.client); // warm the connections and the server's queue
  const before = await scrapeMetrics(server.url);
  const prober = probe ? await probeLatency(server.url, 50) : undefined;
  const cpu0 = cpuSecondsOf(server.child.pid);
  const client0 = process.cpuUsage();
  const result = await closedLoop(target, connections, seconds, opt.client);
  const client = process.cpuUsage(client0);
  const answered = result.throughputRps * result.durationS;
  const cpuMsPerRequest = ((cpuSecondsOf(server.child.pid) - cpu0) * 1000) / answered;
  const clientCpuMsPerRequest = (client.user + client.system) / 1000 / answered;
  const healthz = await prober?.stop();
  const after = await scrapeMetrics(server.url);
  return {
    result,
    cpuMsPerRequest,
    clientCpuMsPerRequest,
    ...(healthz !== undefined && { healthz }),
    ...(before && after && { server: diffMetrics(before, after, 'mobilenetv2') }),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Parts.

interface PrepCost {
  sharpMs: number;
  ocularMs: number;
  ocularNormalizeMs: number;
}
/** Serial, single-threaded cost per image: sharp's own decode + resize to raw, then Ocular's prepare + normalize. */
async function preprocessingCost(list: readonly Photo[]): Promise<PrepCost> {
  const loaded = parseManifest({ models: [fixtureJson.models.find((m) => m['name'] === 'mobilenetv2')] });
  const entry = loaded.models[0];
  if (entry?.task !== 'image-classification') throw new Error('no mobilenetv2');
  const spec = entry.input;
  const limits = { maxInputPixels: 40_000_000, allowedFormats: new Set(['jpeg', 'png', 'webp'] as const) };
  const reps = quick ? 3 : 8;
  const time = async (fn: (b: Buffer) => Promise<unknown>): Promise<number> => {
    for (const p of list) await fn(p.bytes);
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) for (const p of list) await fn(p.bytes);
    return (performance.now() - t0) / (reps * list.length);
  };
  const sharpOnly = (b: Buffer) => sharp(b).resize({ width: 256, height: 256, fit: 'outside', kernel: 'linear' }).raw().toBuffer();
  const tensor = new Float32Array(3 * spec.width * spec.height);
  const params = normalizeParamsOf(spec);
  configureSharp();
  // Interleaved thrice, medians: the machine is noisy.
  const s: number[] = [];
  const o: number[] = [];
  const n: number[] = [];
  for (let i = 0; i < 3; i++) {
    s.push(await time(sharpOnly));
    o.push(await time((b) => prepareImage(b, spec, limits)));
    n.push(
      await time(async (b) => {
        const img = await prepareImage(b, spec, limits);
        normalizeInto(img.pixels, img.width, img.height, params, tensor, 0, spec.height, spec.width);
      }),
    );
  }
  return { sharpMs: spread(s).median, ocularMs: spread(o).median, ocularNormalizeMs: spread(n).median };
}

/** Wall time from spawn to readiness, and the CPU the process used by then (all threads: the noise-robust part). */
async function timeToReady(): Promise<{ wallMs: Spread; cpuMs: Spread }> {
  const times: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < (quick ? 1 : 3); i++) {
    const s = await startOcular(undefined, 'default-manifest');
    cpu.push(cpuSecondsOf(s.child.pid) * 1000);
    times.push(s.readyMs);
    await s.stop();
  }
  return { wallMs: spread(times), cpuMs: spread(cpu) };
}

/**
 * RSS of a fresh Ocular after counts[0] and counts[1] answers (closed loop, 16 connections). Bounded in time too
 * (--rss-seconds): on a busy machine the second reading is taken when the time is up, and the count it was taken
 * at is reported.
 */
async function rssAfter(counts: [number, number]): Promise<{ rssMb: [number, number]; requests: [number, number] }> {
  const server = await startOcular(manifestWith('mobilenetv2', {}));
  try {
    const target: LoadTarget = { url: server.url, path: predictPath('mobilenetv2'), bodies: rawBodies };
    const rss: number[] = [];
    const at: number[] = [];
    let done = 0;
    const until = performance.now() + opt.rssSeconds * 1000;
    for (const n of counts) {
      // Closed loop at 16 connections, in runs of about 5 s, until n answers in total (or the time is up).
      while (done < n && (at.length === 0 || performance.now() < until)) {
        const r = await closedLoop(target, 16, Math.max(1, Math.min(5, Math.ceil((n - done) / 150))), opt.client);
        done += r.requests;
      }
      await new Promise((r) => setTimeout(r, 500));
      const m = await scrapeMetrics(server.url);
      rss.push((m?.series.get('process_resident_memory_bytes') ?? NaN) / 2 ** 20);
      at.push(done);
      log(`RSS after ${done} requests: ${fmt(rss[rss.length - 1] as number)} MiB`);
    }
    return { rssMb: rss as [number, number], requests: at as [number, number] };
  } finally {
    await server.stop();
  }
}

/**
 * The issue's targets are on the median of the interleaved pairs: `a[i] / b[i]` for each round i, then their median
 * (with their min and max). `ofMedians`, the ratio of the two contenders' medians, is kept for comparison with runs
 * before 2026-11-28, whose headline it was.
 */
type RatioSpread = Spread & { ofMedians: number };
function pairRatio(a: readonly number[], b: readonly number[]): RatioSpread {
  return { ...spread(a.map((x, i) => x / (b[i] ?? NaN))), ofMedians: spread(a).median / spread(b).median };
}

interface YoloxRow {
  connections: number;
  /** maxBatchSize 8 with the default tuning (on the CPU provider: capped at the size warm-up measured cheapest). */
  batch8: Spread;
  /** maxBatchSize 8, tune off: every batch up to 8. */
  batch8Untuned: Spread;
  batch1: Spread;
  /** Against batch 1, round by round (pairRatio). */
  ratio: RatioSpread;
  ratioUntuned: RatioSpread;
  meanBatch: number;
  meanBatchUntuned: number;
}
interface YoloxResult {
  rows: YoloxRow[];
  /** What the first round's tuned server chose and measured (its /v1/models batching). */
  batchLimit: number;
  /** The limit each round's tuned server chose. */
  limits: number[];
  tuning?: { perImageMs: { size: number; ms: number }[] };
}
async function batchingOf(url: string, model: string): Promise<{ batchLimit: number; tuning?: { perImageMs: { size: number; ms: number }[] } }> {
  const res = await fetch(`${url}/v1/models/${model}`);
  const body = (await res.json()) as { stages: { batching: { batchLimit: number; tuning?: { perImageMs: { size: number; ms: number }[] } } }[] };
  const b = body.stages[0]?.batching;
  if (b === undefined) throw new Error(`${model}: no stage in /v1/models`);
  return { batchLimit: b.batchLimit, ...(b.tuning !== undefined && { tuning: b.tuning }) };
}
/**
 * Each round starts the three servers afresh and measures them at 1, 4 and 16 connections, in that round's order
 * (balancedOrder). Fresh processes every round: on this machine one process of a build can run a few per
 * cent faster or slower than another of the same build for its whole life (memory layout), so servers kept for all
 * rounds would carry one draw of that into every round.
 */
async function yoloxBatching(): Promise<YoloxResult> {
  const kinds = [
    { key: 'b8', manifest: manifestWith('yolox-nano', { maxBatchSize: 8 }) },
    { key: 'b8u', manifest: manifestWith('yolox-nano', { maxBatchSize: 8, tune: 'off' }) },
    { key: 'b1', manifest: manifestWith('yolox-nano', { maxBatchSize: 1 }) },
  ] as const;
  type Key = (typeof kinds)[number]['key'];
  const conns = [1, 4, 16];
  const tput = new Map<string, number[]>();
  const batch = new Map<string, number[]>();
  const push = (m: Map<string, number[]>, k: string, v: number) => m.set(k, [...(m.get(k) ?? []), v]);
  const limits: number[] = [];
  let chosen: Awaited<ReturnType<typeof batchingOf>> | undefined;
  for (let r = 0; r < opt.yoloxRounds; r++) {
    // A balanced order (balancedOrder): six rounds give each server each place, and each other server just before it,
    // twice. The rotation used before ran b8 right after b1 wherever the two were adjacent, never the other way round.
    const order = balancedOrder(kinds.length, r).map((i) => kinds[i] as (typeof kinds)[number]);
    const servers: { key: Key; server: RunningServer }[] = [];
    try {
      for (const k of order) servers.push({ key: k.key, server: await startOcular(k.manifest, `yolox-${k.key}`) });
      const tuned = servers.find((x) => x.key === 'b8')?.server as RunningServer;
      const b = await batchingOf(tuned.url, 'yolox-nano');
      chosen ??= b;
      limits.push(b.batchLimit);
      for (const c of conns) {
        for (const { key, server } of servers) {
          const target: LoadTarget = { url: server.url, path: predictPath('yolox-nano'), bodies: rawBodies };
          await closedLoop(target, c, 1, opt.client);
          const before = await scrapeMetrics(server.url);
          const res = await closedLoop(target, c, quick ? 3 : 6, opt.client);
          const after = await scrapeMetrics(server.url);
          push(tput, `${key}/${c}`, res.throughputRps);
          if (before && after) push(batch, `${key}/${c}`, diffMetrics(before, after, 'yolox-nano').meanBatchSize);
        }
      }
    } finally {
      for (const { server } of servers) await server.stop();
    }
    log(`yolox round ${r + 1}/${opt.yoloxRounds}: tuned limit ${limits[limits.length - 1]}; ${conns.map((c) => `c=${c} ${kinds.map((k) => `${k.key} ${fmt(tput.get(`${k.key}/${c}`)?.at(-1) ?? NaN)}`).join(' ')}`).join(' | ')} req/s`);
  }
  const rows: YoloxRow[] = conns.map((c) => {
    const t = (k: Key): Spread => spread(tput.get(`${k}/${c}`) ?? []);
    // Each round's servers are measured one after another: the round is the pair, as for the main contenders.
    const perRound = (k: Key): RatioSpread => pairRatio(tput.get(`${k}/${c}`) ?? [], tput.get(`b1/${c}`) ?? []);
    return {
      connections: c,
      batch8: t('b8'),
      batch8Untuned: t('b8u'),
      batch1: t('b1'),
      ratio: perRound('b8'),
      ratioUntuned: perRound('b8u'),
      meanBatch: spread(batch.get(`b8/${c}`) ?? []).median,
      meanBatchUntuned: spread(batch.get(`b8u/${c}`) ?? []).median,
    };
  });
  for (const row of rows) {
    log(`yolox c=${row.connections}: batch 8 tuned ${fmtSpread(row.batch8)}, untuned ${fmtSpread(row.batch8Untuned)}, batch 1 ${fmtSpread(row.batch1)} req/s; ratios ${fmtSpread(row.ratio, 3)}, ${fmtSpread(row.ratioUntuned, 3)}`);
  }
  if (chosen === undefined) throw new Error('no yolox round ran');
  return { rows, ...chosen, limits };
}

// ---------------------------------------------------------------------------------------------------------------
// The run.

const machine = {
  date: new Date().toISOString(),
  cpu: cpus()[0]?.model ?? 'unknown',
  cores: availableParallelism(),
  memGiB: Math.round(totalmem() / 2 ** 30),
  node: process.version,
  loadAvgAtStart: loadavg().map((v) => Number(v.toFixed(2))),
  env: Object.fromEntries(['UV_THREADPOOL_SIZE', 'MALLOC_ARENA_MAX', 'OCULAR_INTRA_OP_THREADS', 'LD_PRELOAD'].map((k) => [k, childEnv[k] ?? ''])),
  gpu: 'not used: every contender runs on the CPU provider (OCULAR_DEVICE=cpu); GPU figures come from scripts/gpu-sweep.sh',
};
log(`machine: ${machine.cpu}, ${machine.cores} cores, node ${machine.node}, load ${machine.loadAvgAtStart.join(' ')}`);
log(`options: ${JSON.stringify({ ...opt, skip: [...opt.skip] })}`);

const prep = opt.skip.has('prep') ? undefined : await preprocessingCost(photos);
if (prep) log(`preprocessing per image: sharp ${fmt(prep.sharpMs, 2)} ms, Ocular ${fmt(prep.ocularMs, 2)} ms (+normalize ${fmt(prep.ocularNormalizeMs, 2)} ms)`);
const ready = opt.skip.has('ready') ? undefined : await timeToReady();
if (ready) log(`time to ready (default manifest): ${fmtSpread(ready.wallMs, 0)} ms, CPU ${fmtSpread(ready.cpuMs, 0)} ms`);

const ocular = await startOcular(manifestWith('mobilenetv2', {}));
const handler = await startHandler();
// The same server with its compute threads at nice 10: what OCULAR_COMPUTE_NICE costs or buys.
const ocularNice10 = opt.skip.has('nice10') ? undefined : await startOcular(manifestWith('mobilenetv2', {}), 'ocular-nice10', { OCULAR_COMPUTE_NICE: '10' });
const n10Target: LoadTarget | undefined = ocularNice10 && { url: ocularNice10.url, path: predictPath('mobilenetv2'), bodies: rawBodies };
const oTarget: LoadTarget = { url: ocular.url, path: predictPath('mobilenetv2'), bodies: rawBodies };
const hTarget: LoadTarget = { url: handler.url, path: predictPath('mobilenetv2'), bodies: rawBodies };

interface Round {
  inProcess: InProcessResult;
  handler16: Measured;
  ocular16: Measured;
  ocularNice10_16?: Measured;
  handler1: Measured;
  ocular1: Measured;
}
const rounds: Round[] = [];
let openResult: { rps: number; result: LoadResult; server?: ServerSplit } | undefined;
try {
  for (let r = 0; r < opt.rounds; r++) {
    const partial: Partial<Round> = {};
    const steps: (() => Promise<void>)[] = [
      async () => void (partial.inProcess = await runInProcess(opt.durationS, quick ? 10 : 30)),
      async () => void (partial.handler16 = await measure(handler, hTarget, 16, opt.durationS, true)),
      async () => void (partial.ocular16 = await measure(ocular, oTarget, 16, opt.durationS, true)),
      ...(ocularNice10 !== undefined && n10Target !== undefined
        ? [async () => void (partial.ocularNice10_16 = await measure(ocularNice10, n10Target, 16, opt.durationS, true))]
        : []),
    ];
    // A balanced order (balancedOrder), so that no contender always runs first, or right after the same other one.
    for (const i of balancedOrder(steps.length, r)) await (steps[i] as () => Promise<void>)();
    const c1 = r % 2 === 0 ? ['h', 'o'] : ['o', 'h'];
    for (const who of c1) {
      if (who === 'h') partial.handler1 = await measure(handler, hTarget, 1, opt.c1DurationS, false);
      else partial.ocular1 = await measure(ocular, oTarget, 1, opt.c1DurationS, false);
    }
    const round = partial as Round;
    rounds.push(round);
    log(
      `round ${r + 1}/${opt.rounds}: in-process ${fmt(round.inProcess.imagesPerSecond)} img/s cpu ${fmt(round.inProcess.cpuMsPerImage, 2)} ms | handler ${fmt(round.handler16.result.throughputRps)} req/s cpu ${fmt(round.handler16.cpuMsPerRequest, 2)} ms p99 ${fmt(round.handler16.result.latencyMs.p99)} ms, c1 ${fmt(round.handler1.result.throughputRps)} | ocular ${fmt(round.ocular16.result.throughputRps)} req/s cpu ${fmt(round.ocular16.cpuMsPerRequest, 2)} ms p99 ${fmt(round.ocular16.result.latencyMs.p99)} ms, c1 ${fmt(round.ocular1.result.throughputRps)} | healthz p99 handler ${fmt(round.handler16.healthz?.p99 ?? NaN)} ocular ${fmt(round.ocular16.healthz?.p99 ?? NaN)} ms | mean batch ${fmt(round.ocular16.server?.meanBatchSize ?? NaN, 2)}`,
    );
  }
  if (!opt.skip.has('open')) {
    const capacity = spread(rounds.map((r) => r.ocular16.result.throughputRps)).median;
    const rps = Math.max(1, Math.round(capacity * 0.6));
    await closedLoop(oTarget, 4, 1, opt.client);
    const before = await scrapeMetrics(ocular.url);
    const result = await openLoop(oTarget, rps, opt.openDurationS);
    const after = await scrapeMetrics(ocular.url);
    openResult = { rps, result, ...(before && after && { server: diffMetrics(before, after, 'mobilenetv2') }) };
    log(`open loop at ${rps} req/s: p50 ${fmt(result.latencyMs.p50)} p99 ${fmt(result.latencyMs.p99)} ms, ${fmt(result.throughputRps)} req/s`);
  }
} finally {
  await ocular.stop();
  await handler.stop();
  await ocularNice10?.stop();
}

const rss = opt.skip.has('rss') ? undefined : await rssAfter(opt.rss);
const yolox = opt.skip.has('yolox') ? undefined : await yoloxBatching();

// ---------------------------------------------------------------------------------------------------------------
// Report.

const col = <T>(pick: (r: Round) => T): T[] => rounds.map(pick);
const s = {
  inProcess: spread(col((r) => r.inProcess.imagesPerSecond)),
  inProcessP50: spread(col((r) => r.inProcess.singleImageLatencyMs.p50)),
  inProcessCpu: spread(col((r) => r.inProcess.cpuMsPerImage)),
  handlerCpu: spread(col((r) => r.handler16.cpuMsPerRequest)),
  ocularCpu: spread(col((r) => r.ocular16.cpuMsPerRequest)),
  handlerClientCpu: spread(col((r) => r.handler16.clientCpuMsPerRequest)),
  ocularClientCpu: spread(col((r) => r.ocular16.clientCpuMsPerRequest)),
  handler16: spread(col((r) => r.handler16.result.throughputRps)),
  ocular16: spread(col((r) => r.ocular16.result.throughputRps)),
  handler1: spread(col((r) => r.handler1.result.throughputRps)),
  ocular1: spread(col((r) => r.ocular1.result.throughputRps)),
  handler16p50: spread(col((r) => r.handler16.result.latencyMs.p50)),
  ocular16p50: spread(col((r) => r.ocular16.result.latencyMs.p50)),
  handler16p99: spread(col((r) => r.handler16.result.latencyMs.p99)),
  ocular16p99: spread(col((r) => r.ocular16.result.latencyMs.p99)),
  handler1p50: spread(col((r) => r.handler1.result.latencyMs.p50)),
  ocular1p50: spread(col((r) => r.ocular1.result.latencyMs.p50)),
  handlerHealthP99: spread(col((r) => r.handler16.healthz?.p99 ?? NaN)),
  ocularHealthP99: spread(col((r) => r.ocular16.healthz?.p99 ?? NaN)),
  nice10_16: spread(col((r) => r.ocularNice10_16?.result.throughputRps ?? NaN)),
  nice10Cpu: spread(col((r) => r.ocularNice10_16?.cpuMsPerRequest ?? NaN)),
  nice10p50: spread(col((r) => r.ocularNice10_16?.result.latencyMs.p50 ?? NaN)),
  nice10p99: spread(col((r) => r.ocularNice10_16?.result.latencyMs.p99 ?? NaN)),
  nice10HealthP99: spread(col((r) => r.ocularNice10_16?.healthz?.p99 ?? NaN)),
  meanBatch: spread(col((r) => r.ocular16.server?.meanBatchSize ?? NaN)),
  queueMs: spread(col((r) => r.ocular16.server?.queueMs ?? NaN)),
  preprocessMs: spread(col((r) => r.ocular16.server?.preprocessMs ?? NaN)),
  inferenceMs: spread(col((r) => r.ocular16.server?.inferencePerBatchMs ?? NaN)),
};
/** Ratio of the medians, and the ratios of each round's pair (min–max), so the spread of the pairing shows. */
const ratio = (a: (r: Round) => number, b: (r: Round) => number): RatioSpread => pairRatio(rounds.map(a), rounds.map(b));
const withOfMedians = (r: RatioSpread): string => `${fmtSpread(r, 3)}; ratio of the medians ${fmt(r.ofMedians, 3)}`;
const ratios = {
  vsInProcess: ratio((r) => r.ocular16.result.throughputRps, (r) => r.inProcess.imagesPerSecond),
  vsHandler: ratio((r) => r.ocular16.result.throughputRps, (r) => r.handler16.result.throughputRps),
  cpuVsInProcess: ratio((r) => r.ocular16.cpuMsPerRequest, (r) => r.inProcess.cpuMsPerImage),
  cpuVsHandler: ratio((r) => r.ocular16.cpuMsPerRequest, (r) => r.handler16.cpuMsPerRequest),
  vsHandlerC1: ratio((r) => r.ocular1.result.throughputRps, (r) => r.handler1.result.throughputRps),
  p50vsHandler16: ratio((r) => r.ocular16.result.latencyMs.p50, (r) => r.handler16.result.latencyMs.p50),
  p99vsHandler16: ratio((r) => r.ocular16.result.latencyMs.p99, (r) => r.handler16.result.latencyMs.p99),
  p50vsHandler1: ratio((r) => r.ocular1.result.latencyMs.p50, (r) => r.handler1.result.latencyMs.p50),
  p50vsInProcess1: ratio((r) => r.ocular1.result.latencyMs.p50, (r) => r.inProcess.singleImageLatencyMs.p50),
  vsNice10: ratio((r) => r.ocular16.result.throughputRps, (r) => r.ocularNice10_16?.result.throughputRps ?? NaN),
};
const openP99Ratio = openResult ? openResult.result.latencyMs.p99 / s.ocular1p50.median : NaN;
const rssGrowth = rss ? rss.rssMb[1] / rss.rssMb[0] - 1 : NaN;

const yes = (ok: boolean) => (ok ? 'met' : '**not met**');
const lines: string[] = [];
lines.push(`### Benchmark run ${machine.date}`, '');
lines.push(
  `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memGiB} GiB, Node ${machine.node}, load average at start ${machine.loadAvgAtStart.join(' ')}; GPU: ${machine.gpu}.`,
  `Settings: ${opt.rounds} interleaved rounds, ${opt.durationS} s per saturated run, ${opt.c1DurationS} s per single-connection run; intra-op threads ${intraOpThreadsOf({ intraOpThreads: opt.intraOp })} for every contender; closed-loop client ${opt.client}; env ${JSON.stringify(machine.env)}${quick ? '; **--quick (smoke run: not for the record)**' : ''}.`,
  `Node options, the same for every contender (npm start's): \`${ocularNodeOptions.join(' ') || '(none)'}\`; the handler and the in-process loop add \`--import tsx\`, Ocular runs dist/.`,
  `Command: \`npm run bench${process.argv.slice(2).length > 0 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}\``,
  '',
  'Median (min–max) over the rounds. A ratio is the median (min–max) of the per-round ratios: each round is one interleaved pair (or triple) of the contenders.',
  '',
  '| contender | req/s or img/s, 16 conn | CPU ms per image, 16 conn | p50 ms | p99 ms | req/s, 1 conn | p50 ms, 1 conn | /healthz p99 ms saturated |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  `| in-process loop (batch 8, overlapped) | ${fmtSpread(s.inProcess)} | ${fmtSpread(s.inProcessCpu, 2)} | | | | ${fmtSpread(s.inProcessP50)} (one image, serial) | |`,
  `| hand-written handler | ${fmtSpread(s.handler16)} | ${fmtSpread(s.handlerCpu, 2)} | ${fmtSpread(s.handler16p50)} | ${fmtSpread(s.handler16p99)} | ${fmtSpread(s.handler1)} | ${fmtSpread(s.handler1p50)} | ${fmtSpread(s.handlerHealthP99)} |`,
  `| Ocular | ${fmtSpread(s.ocular16)} | ${fmtSpread(s.ocularCpu, 2)} | ${fmtSpread(s.ocular16p50)} | ${fmtSpread(s.ocular16p99)} | ${fmtSpread(s.ocular1)} | ${fmtSpread(s.ocular1p50)} | ${fmtSpread(s.ocularHealthP99)} |`,
  ...(ocularNice10 !== undefined
    ? [`| Ocular with OCULAR_COMPUTE_NICE=10 (compute threads at nice 10; for comparison) | ${fmtSpread(s.nice10_16)} | ${fmtSpread(s.nice10Cpu, 2)} | ${fmtSpread(s.nice10p50)} | ${fmtSpread(s.nice10p99)} | | | ${fmtSpread(s.nice10HealthP99)} |`]
    : []),
  '',
  `Load generator (${opt.client}, in the bench process, on the same cores; the in-process loop has none): ${fmtSpread(s.ocularClientCpu, 2)} ms of CPU per request against Ocular, ${fmtSpread(s.handlerClientCpu, 2)} against the handler, at 16 connections.`,
  '',
  `Inside Ocular at 16 connections (from /metrics): mean batch ${fmtSpread(s.meanBatch, 2)}, queue ${fmtSpread(s.queueMs)} ms/request, preprocessing ${fmtSpread(s.preprocessMs)} ms/request, inference ${fmtSpread(s.inferenceMs)} ms/batch.`,
  '',
  '| measure | value | target | |',
  '| --- | ---: | ---: | --- |',
  `| throughput, Ocular / in-process loop (16 conn) | ${withOfMedians(ratios.vsInProcess)} | ≥ 0.95 | ${yes(ratios.vsInProcess.median >= 0.95)} |`,
  `| throughput, Ocular / handler (16 conn) | ${withOfMedians(ratios.vsHandler)} | ≥ 1.2 | ${yes(ratios.vsHandler.median >= 1.2)} |`,
  `| CPU per image, Ocular / in-process loop (lower is better; 1/0.95 = 1.053 is the throughput target's equivalent) | ${fmtSpread(ratios.cpuVsInProcess, 3)} | ≤ 1.053 | ${yes(ratios.cpuVsInProcess.median <= 1 / 0.95)} |`,
  `| CPU per image, Ocular / handler (lower is better; 1/1.2 = 0.833) | ${fmtSpread(ratios.cpuVsHandler, 3)} | ≤ 0.833 | ${yes(ratios.cpuVsHandler.median <= 1 / 1.2)} |`,
  `| throughput, Ocular / handler (1 conn) | ${fmtSpread(ratios.vsHandlerC1, 3)} | (none) | |`,
  `| p50 latency, Ocular / handler (16 conn) | ${fmtSpread(ratios.p50vsHandler16, 3)} | (none) | |`,
  `| p99 latency, Ocular / handler (16 conn) | ${fmtSpread(ratios.p99vsHandler16, 3)} | (none) | |`,
  ...(ocularNice10 !== undefined
    ? [`| throughput, Ocular (compute threads at the process priority, the default) / Ocular with OCULAR_COMPUTE_NICE=10 (16 conn); /healthz p99 ${fmt(s.ocularHealthP99.median)} against ${fmt(s.nice10HealthP99.median)} ms | ${fmtSpread(ratios.vsNice10, 3)} | (none) | |`]
    : []),
  `| p50 latency, Ocular / handler (1 conn) | ${fmtSpread(ratios.p50vsHandler1, 3)} | (none) | |`,
  `| p50 latency, Ocular 1 conn / in-process single image | ${fmtSpread(ratios.p50vsInProcess1, 3)} | (none) | |`,
  openResult
    ? `| open loop at 60 % of capacity (${openResult.rps} req/s, ${opt.openDurationS} s): p99 / unloaded p50 | ${fmt(openResult.result.latencyMs.p99)} / ${fmt(s.ocular1p50.median)} = ${fmt(openP99Ratio, 2)} | ≤ 3 | ${yes(openP99Ratio <= 3)} |`
    : '| open loop | skipped | ≤ 3 | |',
  `| /healthz p99 while saturated (Ocular) | ${fmtSpread(s.ocularHealthP99)} ms | < 20 ms | ${yes(s.ocularHealthP99.median < 20)} |`,
  ready
    ? `| time to ready, default manifest (npm start's command): wall (CPU used by then, all threads) | ${fmtSpread(ready.wallMs, 0)} ms (CPU ${fmtSpread(ready.cpuMs, 0)} ms) | < 2000 ms | ${yes(ready.wallMs.median < 2000)} |`
    : '| time to ready | skipped | < 2000 ms | |',
  rss
    ? `| RSS after ${rss.requests[0]} / ${rss.requests[1]} requests | ${fmt(rss.rssMb[0])} / ${fmt(rss.rssMb[1])} MiB (${rssGrowth >= 0 ? '+' : ''}${fmt(rssGrowth * 100)} %) | within 10 % | ${yes(Math.abs(rssGrowth) <= 0.1)} |`
    : '| RSS | skipped | within 10 % | |',
  ...(yolox?.rows ?? []).flatMap((y) => [
    `| yolox-nano ${y.connections} conn: dynamic batching (maxBatchSize 8, tuned: limit ${[...new Set(yolox?.limits ?? [])].join(' or ')}) / batch 1 | ${withOfMedians(y.ratio)} (${fmtSpread(y.batch8)} vs ${fmtSpread(y.batch1)} req/s; mean batch ${fmt(y.meanBatch, 2)}) | ${y.connections === 1 ? '≥ 0.95' : '≥ 1.0'} | ${yes(y.ratio.median >= (y.connections === 1 ? 0.95 : 1.0))} |`,
    `| yolox-nano ${y.connections} conn: batching up to 8, tune off / batch 1 | ${withOfMedians(y.ratioUntuned)} (${fmtSpread(y.batch8Untuned)} req/s; mean batch ${fmt(y.meanBatchUntuned, 2)}) | (for comparison) | |`,
  ]),
  ...(yolox !== undefined
    ? [`| yolox-nano warm-up tuning (first round's server): per-image ms by batch size | ${(yolox.tuning?.perImageMs ?? []).map((x) => `${x.size}: ${fmt(x.ms, 1)}`).join(', ')} → limit ${yolox.batchLimit}; limits over the rounds: ${yolox.limits.join(', ')} | (none) | |`]
    : []),
  prep
    ? `| preprocessing per image, serial: Ocular prepare (+ normalize) / sharp decode + resize to raw | ${fmt(prep.ocularMs, 2)} (${fmt(prep.ocularNormalizeMs, 2)}) / ${fmt(prep.sharpMs, 2)} ms = ${fmt(prep.ocularMs / prep.sharpMs, 3)} | (none) | |`
    : '| preprocessing | skipped | | |',
  `| baseline check: handler reproduces the issue's figures (≈120 req/s at 16 conn, ≈76 at 1) | ${fmt(s.handler16.median)} / ${fmt(s.handler1.median)} req/s | ±20 % | ${yes(Math.abs(s.handler16.median / 120 - 1) <= 0.2 && Math.abs(s.handler1.median / 76 - 1) <= 0.2)} |`,
  '',
);
const report = lines.join('\n');
process.stdout.write(`\n${report}\n`);
mkdirSync(resolve(values.out, '..'), { recursive: true });
writeFileSync(`${values.out}.md`, `${report}\n`);
writeFileSync(`${values.out}.json`, `${JSON.stringify({ machine, options: { ...opt, skip: [...opt.skip] }, prep, ready, rounds, open: openResult, rss, yolox, summary: s, ratios }, null, 2)}\n`);
log(`wrote ${values.out}.md and ${values.out}.json`);
