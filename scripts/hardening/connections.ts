/**
 * The idle-socket flood of issue 18 (item 5), full size: a server started under `ulimit -n 1024` (through bash,
 * which then execs node), with its probe listener, and --sockets (default 2000) idle connections held against its
 * main port for --hold-seconds (10). Prints JSON: how many connections the server held and dropped, the probe
 * listener's /healthz latency during the flood, whether the main port's /healthz got through, RSS peak and after,
 * the server's event-loop delay (its own nodejs_eventloop_lag_max_seconds), and whether it survived and serves again.
 * 127.0.0.1 only. `npx tsx scripts/hardening/connections.ts [--sockets 2000] [--limit 1024] [--hold-seconds 10]
 * [--max-connections N]` (N above the limit shows the lock-out that the default cap prevents).
 */
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { send, writeManifest } from '../../test/helpers/hostile.js';
import { freePort, startServer } from '../../test/helpers/server.js';
import { percentile } from '../../test/helpers/load.js';
import { arg, scrape } from './common.js';

const sockets = arg('sockets', 2000);
const limit = arg('limit', 1024);
const holdSeconds = arg('hold-seconds', 10);
const maxConnections = arg('max-connections', 0);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const manifest = writeManifest(mkdtempSync(join(tmpdir(), 'ocular-connections-')), ['mobilenetv2'], (m) => m);
const [port, probePort] = [await freePort(), await freePort()];
const server = startServer(
  {
    OCULAR_MANIFEST: manifest,
    OCULAR_LOG_LEVEL: 'warn',
    PORT: String(port),
    OCULAR_PROBE_PORT: String(probePort),
    ...(maxConnections > 0 ? { OCULAR_MAX_CONNECTIONS: String(maxConnections) } : {}),
  },
  [],
  { openFileLimit: limit },
);
process.on('exit', () => server.kill());
const pid = server.child.pid ?? 0;
const rssMb = (field: 'VmRSS' | 'VmHWM') => {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Math.round(Number(m?.[1] ?? NaN) / 1024);
};
const deadline = performance.now() + 120_000;
while ((await send(probePort, { path: '/readyz', timeoutMs: 1000 }).then((r) => r.status, () => 0)) !== 200) {
  if (server.child.exitCode !== null || performance.now() > deadline) throw new Error(`server not ready: ${server.stderr().slice(-2000)}`);
  await sleep(200);
}
await scrape(port); // resets the server's event-loop histogram: the next scrape covers the flood
const rssBefore = rssMb('VmRSS');
/** Descriptors the server holds with no client connected: what the cap's reserve must cover. */
const fdsBefore = readdirSync(`/proc/${pid}/fd`).length;

// The flood: connections opened in bursts of 100, none sends a byte.
const held: Socket[] = [];
let closedByServer = 0;
for (let i = 0; i < sockets; i++) {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => {});
  s.on('close', () => closedByServer++);
  held.push(s);
  if (i % 100 === 99) await sleep(10);
}

// During the hold: the probe listener every 200 ms, and the main port's /healthz once.
const probeMs: number[] = [];
let probeFailures = 0;
const mainHealthz = await send(port, { path: '/healthz', timeoutMs: 2000 }).then(
  (r) => String(r.status),
  (err: Error) => `no answer (${err.message})`,
);
const holdEnd = performance.now() + holdSeconds * 1000;
while (performance.now() < holdEnd) {
  await send(probePort, { path: '/healthz', timeoutMs: 2000 }).then(
    (r) => (r.status === 200 ? probeMs.push(r.ms) : probeFailures++),
    () => probeFailures++,
  );
  await sleep(200);
}
const heldAtEnd = held.filter((s) => !s.destroyed).length;
const closedBeforeRelease = closedByServer;
const rssPeak = rssMb('VmHWM');

for (const s of held) s.destroy();
let servesAgain = false;
for (let i = 0; i < 50 && !servesAgain; i++) {
  servesAgain = await send(port, { path: '/healthz', timeoutMs: 1000 }).then((r) => r.status === 200, () => false);
  if (!servesAgain) await sleep(100);
}
const metrics = servesAgain ? await scrape(port) : {};
const figures = {
  sockets,
  openFileLimit: limit,
  maxConnections: maxConnections > 0 ? maxConnections : 'auto',
  serverFdsBeforeFlood: fdsBefore,
  heldAtEnd,
  closedByServer: closedBeforeRelease,
  droppedCounted: metrics['ocular_http_connections_dropped_total{listener="main"}'],
  probeHealthzMs: probeMs.length > 0 ? { p50: Math.round(percentile(probeMs, 50)), max: Math.round(Math.max(...probeMs)) } : null,
  probeFailures,
  mainPortHealthzDuringFlood: mainHealthz,
  eventLoopLagMaxMs: metrics['nodejs_eventloop_lag_max_seconds'] !== undefined ? Math.round(metrics['nodejs_eventloop_lag_max_seconds'] * 1000) : null,
  rssMb: { before: rssBefore, peak: rssPeak, after: rssMb('VmRSS') },
  servesAgain,
  processAlive: server.child.exitCode === null,
};
process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
server.kill();
process.exit(figures.processAlive && servesAgain && probeFailures === 0 ? 0 : 1);
