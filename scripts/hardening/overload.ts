/**
 * The long overload run (issue #5, part 3; issue #20, item 4): capacity measured with a closed loop, then --seconds
 * (default 30) at --factor (default 3) times it; then the time until latency is back to normal (three predictions
 * in a row within 1.5x the idle p50). Meanwhile GET /healthz is probed every 50 ms from a process of its own, as a
 * kubelet would (scripts/lib/probe-child.ts), and the queue depth is read from /metrics. Prints the figures as JSON.
 *
 *   npx tsx scripts/hardening/overload.ts [--seconds 30] [--factor 3] [--queue 16] [--client lean] [--compute-nice 0]
 *
 * --client says what drives the load, in this process:
 *   lean        the bench's lean HTTP/1.1 client (scripts/lib/http1-pool.ts): a true open loop, each latency from
 *               the request's scheduled send; closed loop for the capacity;
 *   autocannon  autocannon at the same overall rate (`overallRate`, up to 256 connections), as a user would run it;
 *   node        Node's http client with every answer parsed, each 200's top-1 label checked (the CI test's client).
 * --compute-nice sets OCULAR_COMPUTE_NICE for the server (its compute threads' nice value; default the server's, 0).
 * --cpu-prof DIR has the server write V8 CPU profiles of its threads into DIR when it exits (`node --cpu-prof`);
 * `npx tsx scripts/cpuprofile-top.ts FILE` says where each thread's time went.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { imagePath } from '../../test/helpers/shared.js';
import { send } from '../../test/helpers/hostile.js';
import * as checked from '../../test/helpers/load.js';
import { autocannonRateLoop, closedLoop, openLoop, probeLatency, type LoadClient } from '../lib/load.js';
import type { LatencySummary } from '../lib/stats.js';
import { arg, clientArg, serve } from './common.js';

const seconds = arg('seconds', 30);
const factor = arg('factor', 3);
const queue = arg('queue', 16);
const client = clientArg('lean');
const niceAt = process.argv.indexOf('--compute-nice');
const profAt = process.argv.indexOf('--cpu-prof');
const env: Record<string, string> = niceAt >= 0 ? { OCULAR_COMPUTE_NICE: String(process.argv[niceAt + 1]) } : {};
const nodeOptions = profAt >= 0 ? ['--cpu-prof', `--cpu-prof-dir=${String(process.argv[profAt + 1])}`] : [];

const { server, port } = await serve(['mobilenetv2'], (m) => ({ ...m, batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: queue, timeoutMs: 2000 } }), env, nodeOptions);
const base = `http://127.0.0.1:${port}`;
const path = '/v1/models/mobilenetv2/predict';
const photo = readFileSync(imagePath('cat_chelsea.png'));
const target = { url: base, path, bodies: [{ body: photo, contentType: 'image/png' }] };

const predict = async () => (await send(port, { path, body: photo, headers: { 'content-type': 'image/png' } })).ms;
const idle: number[] = [];
for (let i = 0; i < 20; i++) idle.push(await predict());
const idleP50 = checked.percentile(idle, 50);

const round = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? null : Math.round(x * 10) / 10);
const latency = (s: LatencySummary | undefined) => (s === undefined ? null : { count: s.count, p50: round(s.p50), p99: round(s.p99), max: round(s.max) });

/**
 * The server's threads' time from the kernel's scheduler (/proc/PID/task/TID/schedstat: ns on a CPU, ns waiting
 * for one): the main thread's, and all threads' together. What bounds a refusal's latency under overload shows
 * here: a main thread that waits for a CPU while the compute threads run.
 */
function schedOf(pid: number): { mainRunMs: number; mainWaitMs: number; allRunMs: number; allWaitMs: number } {
  const read = (tid: string) => readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
  let allRun = 0;
  let allWait = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const [run = 0, wait = 0] = read(tid);
      allRun += run;
      allWait += wait;
    } catch {
      // A thread that ended meanwhile.
    }
  }
  const [mainRun = 0, mainWait = 0] = read(String(pid));
  return { mainRunMs: mainRun / 1e6, mainWaitMs: mainWait / 1e6, allRunMs: allRun / 1e6, allWaitMs: allWait / 1e6 };
}
const pid = server.child.pid ?? 0;

let maxDepth = 0;
const sampleDepth = () => void checked.queueDepth(port, 'mobilenetv2').then((d) => (maxDepth = Math.max(maxDepth, d)), () => {});
const depthTimer = setInterval(sampleDepth, 100);
depthTimer.unref();

let capacityRps: number;
let overload: Record<string, unknown>;
let lost: number;
let healthz: LatencySummary;
let schedBefore: ReturnType<typeof schedOf> | undefined;
let schedAfter: ReturnType<typeof schedOf> | undefined;
if (client === 'node') {
  const nodeTarget = { port, path, bodies: [photo], labels: ['Egyptian cat'] };
  capacityRps = (await checked.closedLoop(nodeTarget, 8, 10)).rps;
  const probe = await probeLatency(base, 50);
  schedBefore = schedOf(pid);
  const outcomes = await checked.openLoop(nodeTarget, capacityRps * factor, seconds);
  schedAfter = schedOf(pid);
  healthz = await probe.stop();
  const summary = checked.summarise(outcomes);
  lost = summary.lost;
  overload = summary;
} else {
  capacityRps = (await closedLoop(target, 8, 10, client as LoadClient)).throughputRps;
  const rate = capacityRps * factor;
  const probe = await probeLatency(base, 50);
  schedBefore = schedOf(pid);
  const result = client === 'lean' ? await openLoop(target, rate, seconds) : await autocannonRateLoop(target, rate, seconds);
  schedAfter = schedOf(pid);
  healthz = await probe.stop();
  const by = result.latencyByStatusMs ?? {};
  const answered = (key: string) => result.statuses[key] ?? 0;
  lost = Object.entries(result.statuses).reduce((n, [key, count]) => (key === '200' || key === '503' ? n : n + count), 0);
  overload = {
    offered: result.requests,
    answered200: answered('200'),
    refused503: answered('503'),
    statuses: result.statuses,
    lost,
    latency200ms: latency(by['200']),
    latency503ms: latency(by['503']),
  };
}
clearInterval(depthTimer);

const endedAt = performance.now();
let inRow = 0;
let recoveredMs = NaN;
while (performance.now() - endedAt < 60_000) {
  const ms = await predict();
  inRow = ms <= idleP50 * 1.5 ? inRow + 1 : 0;
  if (inRow === 3) {
    recoveredMs = performance.now() - endedAt;
    break;
  }
  await new Promise((r) => setTimeout(r, 100));
}
const ready = (await send(port, { path: '/readyz' })).status;
const figures = {
  command: `npx tsx scripts/hardening/overload.ts ${process.argv.slice(2).join(' ')}`.trim(),
  client,
  computeNice: env['OCULAR_COMPUTE_NICE'] ?? 'default (0)',
  seconds,
  factor,
  maxQueueSize: queue,
  idleP50ms: round(idleP50),
  capacityRps: round(capacityRps),
  offeredRps: round(capacityRps * factor),
  ...overload,
  healthzFromOwnProcessMs: latency(healthz),
  // During the overload, from the kernel's scheduler: how long the server's main thread (and all its threads) ran
  // on a CPU and waited for one.
  serverThreadsDuringOverloadMs:
    schedBefore === undefined || schedAfter === undefined
      ? null
      : {
          mainRan: round(schedAfter.mainRunMs - schedBefore.mainRunMs),
          mainWaitedForCpu: round(schedAfter.mainWaitMs - schedBefore.mainWaitMs),
          allRan: round(schedAfter.allRunMs - schedBefore.allRunMs),
          allWaitedForCpu: round(schedAfter.allWaitMs - schedBefore.allWaitMs),
        },
  maxQueueDepth: maxDepth,
  recoveredToNormalLatencyMs: round(recoveredMs),
  readyAfter: ready,
  processAlive: server.child.exitCode === null,
};
process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
if (profAt >= 0) {
  // A profile is written when the process exits, not when it is killed: SIGTERM, and the drain, first.
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGTERM');
  await exited;
}
server.kill();
process.exit(lost === 0 && ready === 200 ? 0 : 1);
