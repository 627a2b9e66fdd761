/**
 * The OCR model with and without size buckets (manifest `shapeBuckets.mode` 'always' against 'off'), on this
 * machine's provider: requests/s and CPU seconds per request over the shared photos, sent round-robin by a closed
 * loop. Both servers run from the sources (tsx), on one manifest each that serves only the OCR model; the runs
 * alternate A B B A ... so that a noisy neighbour hits both alike. Prints one Markdown table and the medians.
 *
 *   npx tsx scripts/ocr-buckets-bench.ts [--rounds 2] [--duration 15] [--connections 4] [--device cpu]
 *
 * Needs the shared models and photos ($OCULAR_SHARED_DIR, default ../shared). About 2 minutes with the defaults.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { closedLoop, predictPath, type LoadResult } from './lib/load.js';
import { loadPhotos, prepareBody } from './lib/photos.js';
import { cpuSecondsOf, freePort, startServer, type RunningServer } from './lib/server.js';
import { fmt } from './lib/stats.js';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    duration: { type: 'string', default: '15' },
    connections: { type: 'string', default: '4' },
    device: { type: 'string', default: 'cpu' },
  },
});
const rounds = Number(values.rounds);
const durationS = Number(values.duration);
const connections = Number(values.connections);
for (const [name, v] of Object.entries({ rounds, durationS, connections })) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer`);
}
const shared = resolve(process.env['OCULAR_SHARED_DIR'] ?? join(root, '..', 'shared'));

/** The OCR entry of the test fixture manifest, its shared paths made absolute, with the bucket mode given. */
function manifestFor(mode: 'always' | 'off'): string {
  const fixture = JSON.parse(readFileSync(join(root, 'test/fixtures/shared.manifest.json'), 'utf8')) as { models: Record<string, unknown>[] };
  const ocr = fixture.models.find((m) => m['name'] === 'ocr');
  if (ocr === undefined) throw new Error('no ocr model in test/fixtures/shared.manifest.json');
  const text = JSON.stringify({ models: [{ ...ocr, shapeBuckets: { mode } }] }).replaceAll('../../../shared/', `${shared}/`);
  const path = join(mkdtempSync(join(tmpdir(), `ocular-ocr-${mode}-`)), 'manifest.json');
  writeFileSync(path, text);
  return path;
}

async function start(mode: 'always' | 'off'): Promise<RunningServer> {
  const port = await freePort();
  return startServer({
    name: mode,
    args: ['--import', 'tsx', 'src/main.ts'],
    env: {
      ...process.env,
      OCULAR_MANIFEST: manifestFor(mode),
      OCULAR_DEVICE: values.device,
      HOST: '127.0.0.1',
      PORT: String(port),
      OCULAR_LOG_LEVEL: 'warn',
    },
    readyPath: '/readyz',
    port,
    cwd: root,
    timeoutMs: 300_000,
  });
}

const bodies = loadPhotos(join(shared, 'images')).map((p) => prepareBody(p, 'raw'));
const servers = { off: await start('off'), always: await start('always') };
process.stdout.write(`ready: off ${fmt(servers.off.readyMs / 1000)} s, always ${fmt(servers.always.readyMs / 1000)} s (warm-up of every bucket)\n`);
const rows: { mode: string; round: number; result: LoadResult; cpuPerRequestMs: number }[] = [];
try {
  for (let round = 0; round < rounds; round++) {
    const order: ('off' | 'always')[] = round % 2 === 0 ? ['off', 'always'] : ['always', 'off'];
    for (const mode of order) {
      const server = servers[mode];
      const cpu0 = cpuSecondsOf(server.child.pid);
      const result = await closedLoop({ url: server.url, path: predictPath('ocr'), bodies }, connections, durationS, 'lean');
      const cpuPerRequestMs = ((cpuSecondsOf(server.child.pid) - cpu0) * 1000) / Math.max(1, result.requests);
      rows.push({ mode, round, result, cpuPerRequestMs });
      process.stdout.write(`round ${round} ${mode}: ${fmt(result.throughputRps, 2)} req/s\n`);
    }
  }
} finally {
  await Promise.all([servers.off.stop(), servers.always.stop()]);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};
const lines = [
  `| buckets | round | req/s | p50 ms | p99 ms | CPU ms per request | statuses |`,
  `| --- | --- | --- | --- | --- | --- | --- |`,
  ...rows.map(
    (r) =>
      `| ${r.mode} | ${r.round} | ${fmt(r.result.throughputRps, 2)} | ${fmt(r.result.latencyMs.p50)} | ${fmt(r.result.latencyMs.p99)} | ${fmt(r.cpuPerRequestMs)} | ${JSON.stringify(r.result.statuses)} |`,
  ),
];
for (const mode of ['off', 'always'] as const) {
  const mine = rows.filter((r) => r.mode === mode);
  lines.push(
    `| **${mode}, median** | | **${fmt(median(mine.map((r) => r.result.throughputRps)), 2)}** | | | **${fmt(median(mine.map((r) => r.cpuPerRequestMs)))}** | |`,
  );
}
process.stdout.write(`\nOCR, ${connections} connections, ${durationS} s per run, ${bodies.length} photos, device ${values.device}\n${lines.join('\n')}\n`);
