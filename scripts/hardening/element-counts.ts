/**
 * Replays issue 18's element-count case at full size against a real server process on 127.0.0.1: a /v2 infer
 * request whose binary BYTES input holds a million empty elements (a 4 MB body), --count times (default 4) one
 * after another, to mobilenetv2. Before the fix, one such request blocked the event loop for 16 s and grew RSS by
 * 1.9 GB; now each is a 400 from the JSON header. Prints the answers, RSS (before, peak, after), the server's
 * event-loop delay (prom-client's max over the run) and /healthz latency polled meanwhile, as JSON.
 * `npx tsx scripts/hardening/element-counts.ts [--elements 1000000] [--count 4]`
 */
import { readFileSync } from 'node:fs';
import { send } from '../../test/helpers/hostile.js';
import { percentile } from '../../test/helpers/load.js';
import { binaryRequest, bytesElements } from '../../test/v2/helpers.js';
import { arg, scrape, serve } from './common.js';

export interface ElementCountsFigures {
  elements: number;
  bodyBytes: number;
  answers: { status: number; ms: number; error: string }[];
  rssBeforeMb: number;
  rssPeakMb: number;
  rssAfterMb: number;
  eventLoopDelayMaxMs: number;
  healthz: { count: number; p50ms: number; maxMs: number; failed: number };
  processAlive: boolean;
}

/** Resident set size of a process, from /proc (Linux), in MiB. */
function rssMbOf(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? NaN : Number(m[1]) / 1024;
  } catch {
    return NaN;
  }
}

/** Sends `count` million-element BYTES requests to a fresh server and measures it meanwhile. */
export async function replayElementCounts(elements = 1_000_000, count = 4): Promise<ElementCountsFigures> {
  const { server, port } = await serve(['mobilenetv2']);
  const pid = server.child.pid;
  try {
    const { body, headers } = binaryRequest([
      { name: 'input', datatype: 'BYTES', shape: [elements], bytes: bytesElements(Array.from({ length: elements }, () => Buffer.alloc(0))) },
    ]);
    await scrape(port); // resets prom-client's event-loop histogram window
    const rssBeforeMb = rssMbOf(pid);
    let rssPeakMb = rssBeforeMb;
    const sampler = setInterval(() => (rssPeakMb = Math.max(rssPeakMb, rssMbOf(pid))), 50);
    let running = true;
    const healthMs: number[] = [];
    let healthFailed = 0;
    const poll = (async () => {
      while (running) {
        try {
          healthMs.push((await send(port, { path: '/healthz', timeoutMs: 10_000 })).ms);
        } catch {
          healthFailed++;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const answers: ElementCountsFigures['answers'] = [];
    for (let i = 0; i < count; i++) {
      const res = await send(port, { path: '/v2/models/mobilenetv2/infer', body, headers, timeoutMs: 120_000 }).catch((err: Error) => ({ status: 0, ms: NaN, body: err.message }));
      answers.push({ status: res.status, ms: Math.round(res.ms), error: res.body.slice(0, 200) });
    }
    await new Promise((r) => setTimeout(r, 500));
    running = false;
    await poll;
    clearInterval(sampler);
    await new Promise((r) => setTimeout(r, 1000));
    const metrics = await scrape(port);
    return {
      elements,
      bodyBytes: body.length,
      answers,
      rssBeforeMb: Math.round(rssBeforeMb),
      rssPeakMb: Math.round(rssPeakMb),
      rssAfterMb: Math.round(rssMbOf(pid)),
      eventLoopDelayMaxMs: Math.round((metrics['nodejs_eventloop_lag_max_seconds'] ?? NaN) * 1000),
      healthz: { count: healthMs.length, p50ms: Math.round(percentile(healthMs, 50)), maxMs: Math.round(Math.max(...healthMs)), failed: healthFailed },
      processAlive: server.child.exitCode === null,
    };
  } finally {
    server.kill();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await replayElementCounts(arg('elements', 1_000_000), arg('count', 4));
  process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
  process.exit(figures.processAlive && figures.answers.every((a) => a.status === 400) ? 0 : 1);
}
