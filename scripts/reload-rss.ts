/**
 * RSS of the server over repeated reloads of one model (issue #20): a real server process (src/main.ts) serving
 * mobilenetv2 (int8, from ../shared) is sent `--reloads` forced repository loads (`{"parameters":{"force":true}}`:
 * each builds a new version beside the old, switches, and releases the old one's sessions and worker), with
 * `--requests` inferences before each (batch-size tuning off: it only slows each load), and its VmRSS and thread count are read from /proc after every reload.
 * Prints every `--every`-th value and the difference between the last and the `--every`-th (the warm-up).
 *
 * `nice npx tsx scripts/reload-rss.ts [--reloads 100] [--every 10] [--requests 1]`
 * Extra environment for the server (MALLOC_ARENA_MAX=2, ...) is passed through.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeManifest } from '../test/helpers/hostile.js';
import { freePort, startServer, waitReady } from '../test/helpers/server.js';
import { imagePath } from '../test/helpers/shared.js';
import { arg } from './hardening/common.js';

const reloads = arg('reloads', 100);
const every = arg('every', 10);
const requests = arg('requests', 1);

const statusOf = (pid: number, field: string): number =>
  Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);

// Batch-size tuning off: it only makes each load slower (it times batches of 1..8), and the loads are what is measured.
const manifest = writeManifest(mkdtempSync(join(tmpdir(), 'ocular-reload-rss-')), ['mobilenetv2'], (m) => ({
  ...m,
  batching: { ...(m['batching'] as Record<string, unknown>), tune: 'off' },
}));
const port = await freePort();
const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_LOG_LEVEL: 'warn', PORT: String(port), OCULAR_INTRA_OP_THREADS: '1', OCULAR_MANIFEST_WATCH_MS: '0', OCULAR_DEVICE: 'cpu' });
process.on('exit', () => server.kill());
await waitReady(server, port);
const pid = server.child.pid as number;
const base = `http://127.0.0.1:${port}`;
const photo = readFileSync(imagePath('cat_chelsea.png'));

const rows: { reload: number; rssMiB: number; threads: number }[] = [];
const sample = (reload: number) => rows.push({ reload, rssMiB: statusOf(pid, 'VmRSS') / 1024, threads: statusOf(pid, 'Threads') });
sample(0);
const started = performance.now();
for (let i = 1; i <= reloads; i++) {
  for (let r = 0; r < requests; r++) {
    const res = await fetch(`${base}/v1/models/mobilenetv2/predict`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: photo });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`inference before reload ${i} answered ${res.status}`);
  }
  const res = await fetch(`${base}/v2/repository/models/mobilenetv2/load`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"parameters":{"force":true}}' });
  const answer = await res.text();
  if (res.status !== 200 || !answer.includes('"loaded"')) throw new Error(`reload ${i} answered ${res.status} ${answer}`);
  sample(i);
}
const seconds = (performance.now() - started) / 1000;
server.kill();

console.log(`| reload | RSS (MiB) | threads |\n| ---: | ---: | ---: |`);
for (const r of rows.filter((r) => r.reload % every === 0)) console.log(`| ${r.reload} | ${r.rssMiB.toFixed(1)} | ${r.threads} |`);
const warm = rows.find((r) => r.reload === every);
const last = rows.at(-1);
if (warm !== undefined && last !== undefined) {
  console.log(`\n${reloads} forced reloads in ${seconds.toFixed(0)} s; RSS at reload ${last.reload} minus reload ${warm.reload}: ${(last.rssMiB - warm.rssMiB).toFixed(1)} MiB; threads ${warm.threads} -> ${last.threads}`);
}
