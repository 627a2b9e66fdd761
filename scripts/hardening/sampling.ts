/**
 * What the hardening replays report about the server process while a case runs: its RSS (peak and after, from
 * /proc), its event loop's longest delay (prom-client's nodejs_eventloop_lag_max_seconds, reset at each scrape),
 * and /healthz latency sampled every 100 ms. Linux only (RSS from /proc).
 */
import { readFileSync } from 'node:fs';
import { send } from '../../test/helpers/hostile.js';
import { scrape } from './common.js';

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? NaN : Math.round(Number(m[1]) / 1024);
}

export interface CaseFigures {
  rssBeforeMiB: number;
  rssPeakMiB: number;
  rssAfterMiB: number;
  eventLoopLagMaxMs: number;
  healthzMaxMs: number;
  healthzFailures: number;
  healthzProbes: number;
  wallMs: number;
}

/** Runs `work` against the server at `port` (process `pid`), sampling it; `settleMs` after, RSS is read again. */
export async function measure<T>(port: number, pid: number, work: () => Promise<T>, settleMs = 3000): Promise<{ value: T; figures: CaseFigures }> {
  await scrape(port); // resets the lag histogram
  const rssBefore = rssMiB(pid);
  let rssPeak = rssBefore;
  let healthzMax = 0;
  let failures = 0;
  let probes = 0;
  let done = false;
  const sampler = (async () => {
    while (!done) {
      rssPeak = Math.max(rssPeak, rssMiB(pid));
      try {
        const r = await send(port, { path: '/healthz', timeoutMs: 10_000 });
        healthzMax = Math.max(healthzMax, r.ms);
        if (r.status !== 200) failures++;
      } catch {
        failures++;
      }
      probes++;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const started = performance.now();
  const value = await work().finally(() => (done = true));
  const wallMs = Math.round(performance.now() - started);
  await sampler;
  const lag = (await scrape(port))['nodejs_eventloop_lag_max_seconds'] ?? NaN;
  await new Promise((r) => setTimeout(r, settleMs));
  return {
    value,
    figures: {
      rssBeforeMiB: rssBefore,
      rssPeakMiB: rssPeak,
      rssAfterMiB: rssMiB(pid),
      eventLoopLagMaxMs: Math.round(lag * 1000),
      healthzMaxMs: Math.round(healthzMax),
      healthzFailures: failures,
      healthzProbes: probes,
      wallMs,
    },
  };
}
