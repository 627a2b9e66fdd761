/**
 * The soak run (issue #5, part 7): --minutes (default 10) at half the measured capacity with the real photo mix on
 * mobilenetv2 and yolox-nano, sampling every --every seconds (default 10) the server's RSS, heap, open file
 * descriptors, event-loop lag (p99) and the window's request p99. Prints a Markdown table and the growth of each
 * from the first sample to the last. `npx tsx scripts/hardening/soak.ts [--minutes 10]`
 */
import { readdirSync, readFileSync } from 'node:fs';
import { imagePath, sharedPath } from '../../test/helpers/shared.js';
import { closedLoop, openLoop, percentile, summarise, type LoadOutcome } from '../../test/helpers/load.js';
import { arg, scrape, serve } from './common.js';

const minutes = arg('minutes', 10);
const every = arg('every', 10);
const { server, port } = await serve(['mobilenetv2', 'yolox-nano']);
const photos = readdirSync(sharedPath('images')).filter((f) => /\.(jpe?g|png)$/i.test(f)).map((f) => readFileSync(imagePath(f)));
const targets = ['mobilenetv2', 'yolox-nano'].map((m) => ({ port, path: `/v1/models/${m}/predict`, bodies: photos }));

const capacity = (await Promise.all(targets.map((t) => closedLoop(t, 4, 10)))).reduce((a, c) => a + c.rps, 0);
const rate = capacity / 2;
const samples: Record<string, number>[] = [];
const all: LoadOutcome[] = [];
const sample = async (window: LoadOutcome[]) => {
  const m = await scrape(port);
  const ok = window.filter((o) => o.status === 200).map((o) => o.ms);
  samples.push({
    t: samples.length * every,
    rssMb: (m['process_resident_memory_bytes'] ?? NaN) / 2 ** 20,
    heapMb: (m['nodejs_heap_size_used_bytes'] ?? NaN) / 2 ** 20,
    fds: m['process_open_fds'] ?? NaN,
    lagP99ms: (m['nodejs_eventloop_lag_p99_seconds'] ?? NaN) * 1000,
    p99ms: percentile(ok, 99),
    requests: window.length,
  });
};
await sample([]);
const end = performance.now() + minutes * 60_000;
while (performance.now() < end) {
  // Each window: both models at half their share of capacity, for `every` seconds, then a sample.
  const windows = await Promise.all(targets.map((t) => openLoop(t, rate / targets.length, every)));
  const window = windows.flat();
  all.push(...window);
  await sample(window);
}
const first = samples[1] ?? samples[0];
const last = samples[samples.length - 1];
const fmt = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? '-' : v.toFixed(1));
const keys = ['rssMb', 'heapMb', 'fds', 'lagP99ms', 'p99ms'];
const lines = [
  `capacity ${capacity.toFixed(1)} req/s (closed loop), soak at ${rate.toFixed(1)} req/s for ${minutes} min`,
  '',
  `| t (s) | requests in the window | ${keys.join(' | ')} |`,
  `| --- | --- | ${keys.map(() => '---').join(' | ')} |`,
  ...samples.map((s) => `| ${s['t']} | ${s['requests']} | ${keys.map((k) => fmt(s[k])).join(' | ')} |`),
  '',
  `growth from t=${first?.['t']} s to t=${last?.['t']} s: ${keys.map((k) => `${k} ${fmt((last?.[k] ?? NaN) - (first?.[k] ?? NaN))}`).join(', ')}`,
  `totals: ${JSON.stringify(summarise(all))}`,
];
process.stdout.write(`${lines.join('\n')}\n`);
server.kill();
