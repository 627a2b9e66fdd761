/**
 * The soak run (issue #5, part 7): --minutes (default 10) at half the measured capacity with the real photo mix on
 * mobilenetv2 and yolox-nano, sampling every --every seconds (default 10) the server's RSS, heap, open file
 * descriptors, event-loop lag (p99) and the window's request p99. Prints a Markdown table and the growth of each
 * from the first sample to the last.
 *
 *   npx tsx scripts/hardening/soak.ts [--minutes 10] [--every 10] [--client node]
 *
 * --client drives the load (scripts/hardening/overload.ts says more): node (Node's http client, every answer read;
 * the default), lean (the bench's client, a true open loop) or autocannon (at a fixed overall rate).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { imagePath, sharedPath } from '../../test/helpers/shared.js';
import { closedLoop, openLoop, percentile, summarise, type LoadOutcome } from '../../test/helpers/load.js';
import * as lib from '../lib/load.js';
import { arg, clientArg, scrape, serve } from './common.js';

const minutes = arg('minutes', 10);
const every = arg('every', 10);
const client = clientArg('node');
const { server, port } = await serve(['mobilenetv2', 'yolox-nano']);
const names = readdirSync(sharedPath('images')).filter((f) => /\.(jpe?g|png)$/i.test(f));
const photos = names.map((f) => readFileSync(imagePath(f)));
const models = ['mobilenetv2', 'yolox-nano'];
const targets = models.map((m) => ({ port, path: `/v1/models/${m}/predict`, bodies: photos }));
const libTargets = models.map((m) => ({
  url: `http://127.0.0.1:${port}`,
  path: `/v1/models/${m}/predict`,
  bodies: photos.map((body, i) => ({ body, contentType: /\.png$/i.test(extname(names[i] ?? '')) ? 'image/png' : 'image/jpeg' })),
}));

/** One window's answers: counts, the latencies of its 200s where the client keeps them, else its p99. */
interface Window {
  requests: number;
  ok: number;
  lost: number;
  p99ms: number;
}

const capacity =
  client === 'node'
    ? (await Promise.all(targets.map((t) => closedLoop(t, 4, 10)))).reduce((a, c) => a + c.rps, 0)
    : (await Promise.all(libTargets.map((t) => lib.closedLoop(t, 4, 10, client as lib.LoadClient)))).reduce((a, c) => a + c.throughputRps, 0);
const rate = capacity / 2;
const samples: Record<string, number>[] = [];
const all: LoadOutcome[] = [];
const windows: Window[] = [];
const sample = async (window: Window | undefined) => {
  const m = await scrape(port);
  samples.push({
    t: samples.length * every,
    rssMb: (m['process_resident_memory_bytes'] ?? NaN) / 2 ** 20,
    heapMb: (m['nodejs_heap_size_used_bytes'] ?? NaN) / 2 ** 20,
    fds: m['process_open_fds'] ?? NaN,
    lagP99ms: (m['nodejs_eventloop_lag_p99_seconds'] ?? NaN) * 1000,
    p99ms: window?.p99ms ?? NaN,
    requests: window?.requests ?? 0,
  });
};

/** Both models at half their share of capacity for `every` seconds. */
async function runWindow(): Promise<Window> {
  if (client === 'node') {
    const outcomes = (await Promise.all(targets.map((t) => openLoop(t, rate / targets.length, every)))).flat();
    all.push(...outcomes);
    const s = summarise(outcomes);
    return { requests: outcomes.length, ok: s.answered200, lost: s.lost, p99ms: percentile(outcomes.filter((o) => o.status === 200).map((o) => o.ms), 99) };
  }
  const drive = client === 'lean' ? lib.openLoop : lib.autocannonRateLoop;
  const results = await Promise.all(libTargets.map((t) => drive(t, rate / libTargets.length, every)));
  const ok = results.reduce((n, r) => n + (r.statuses['200'] ?? 0), 0);
  const requests = results.reduce((n, r) => n + r.requests, 0);
  return { requests, ok, lost: requests - ok - results.reduce((n, r) => n + (r.statuses['503'] ?? 0), 0), p99ms: Math.max(...results.map((r) => r.latencyMs.p99)) };
}

await sample(undefined);
const end = performance.now() + minutes * 60_000;
while (performance.now() < end) {
  const window = await runWindow();
  windows.push(window);
  await sample(window);
}
const first = samples[1] ?? samples[0];
const last = samples[samples.length - 1];
const fmt = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? '-' : v.toFixed(1));
const keys = ['rssMb', 'heapMb', 'fds', 'lagP99ms', 'p99ms'];
const lines = [
  `command: npx tsx scripts/hardening/soak.ts ${process.argv.slice(2).join(' ')}`,
  `client ${client}; capacity ${capacity.toFixed(1)} req/s (closed loop), soak at ${rate.toFixed(1)} req/s for ${minutes} min`,
  '',
  `| t (s) | requests in the window | ${keys.join(' | ')} |`,
  `| --- | --- | ${keys.map(() => '---').join(' | ')} |`,
  ...samples.map((s) => `| ${s['t']} | ${s['requests']} | ${keys.map((k) => fmt(s[k])).join(' | ')} |`),
  '',
  `growth from t=${first?.['t']} s to t=${last?.['t']} s: ${keys.map((k) => `${k} ${fmt((last?.[k] ?? NaN) - (first?.[k] ?? NaN))}`).join(', ')}`,
  `totals: ${JSON.stringify(
    client === 'node'
      ? summarise(all)
      : { offered: windows.reduce((n, w) => n + w.requests, 0), answered200: windows.reduce((n, w) => n + w.ok, 0), lost: windows.reduce((n, w) => n + w.lost, 0), worstWindowP99ms: Math.round(Math.max(...windows.map((w) => w.p99ms))) },
  )}`,
];
process.stdout.write(`${lines.join('\n')}\n`);
server.kill();
