/**
 * The long overload run (issue #5, part 3): capacity measured with a closed loop, then --seconds (default 30) at
 * --factor (default 3) times it, open loop; then the time until latency is back to normal (three probes in a row
 * within 1.5x the idle p50). Prints the figures as JSON. `npx tsx scripts/hardening/overload.ts [--seconds 30]`
 */
import { readFileSync } from 'node:fs';
import { imagePath } from '../../test/helpers/shared.js';
import { send } from '../../test/helpers/hostile.js';
import { closedLoop, openLoop, percentile, queueDepth, summarise } from '../../test/helpers/load.js';
import { arg, serve } from './common.js';

const seconds = arg('seconds', 30);
const factor = arg('factor', 3);
const queue = arg('queue', 16);
const { server, port } = await serve(['mobilenetv2'], (m) => ({ ...m, batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: queue, timeoutMs: 2000 } }));
const photo = readFileSync(imagePath('cat_chelsea.png'));
const target = { port, path: '/v1/models/mobilenetv2/predict', bodies: [photo], labels: ['Egyptian cat'] };

const probe = async () => (await send(port, { path: target.path, body: photo, headers: { 'content-type': 'image/png' } })).ms;
const idle: number[] = [];
for (let i = 0; i < 20; i++) idle.push(await probe());
const idleP50 = percentile(idle, 50);
const capacity = await closedLoop(target, 8, 10);
const rate = capacity.rps * factor;
let maxDepth = 0;
const outcomes = await openLoop(target, rate, seconds, () => void queueDepth(port, 'mobilenetv2').then((d) => (maxDepth = Math.max(maxDepth, d)), () => {}));
const endedAt = performance.now();
let inRow = 0;
let recoveredMs = NaN;
while (performance.now() - endedAt < 60_000) {
  const ms = await probe();
  inRow = ms <= idleP50 * 1.5 ? inRow + 1 : 0;
  if (inRow === 3) {
    recoveredMs = performance.now() - endedAt;
    break;
  }
  await new Promise((r) => setTimeout(r, 100));
}
const ready = (await send(port, { path: '/readyz' })).status;
const figures = {
  seconds,
  factor,
  maxQueueSize: queue,
  idleP50ms: Math.round(idleP50),
  capacityRps: Math.round(capacity.rps),
  offeredRps: Math.round(rate),
  ...summarise(outcomes),
  maxQueueDepth: maxDepth,
  recoveredToNormalLatencyMs: Math.round(recoveredMs),
  readyAfter: ready,
  processAlive: server.child.exitCode === null,
};
process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
server.kill();
process.exit(figures.lost === 0 && ready === 200 ? 0 : 1);
