/**
 * Load generation for the overload test and the overload and soak scripts: closed loops to measure capacity, an
 * open loop (arrivals on a fixed schedule, whatever the server does) to offer a multiple of it. Every outcome is
 * kept, so nothing can go missing from the accounting.
 */
import { Agent } from 'node:http';
import { send } from './hostile.js';

export interface LoadOutcome {
  at: number;
  ms: number;
  status?: number;
  code?: string;
  retryAfter?: string;
  top1?: string;
  error?: string;
}

export interface Target {
  port: number;
  path: string;
  bodies: Buffer[];
  /** Expected top-1 label per body (same order), checked on every 200. */
  labels?: (string | undefined)[];
}

async function one(target: Target, i: number, agent: Agent): Promise<LoadOutcome & { body: number }> {
  const at = performance.now();
  const b = i % target.bodies.length;
  try {
    const res = await send(target.port, {
      path: target.path,
      body: target.bodies[b] as Buffer,
      headers: { 'content-type': 'application/octet-stream' },
      agent,
      timeoutMs: 120_000,
    });
    const json = JSON.parse(res.body) as { code?: string; predictions?: { label: string }[] };
    return {
      at,
      body: b,
      ms: performance.now() - at,
      status: res.status,
      ...(json.code !== undefined && { code: json.code }),
      ...(typeof res.headers['retry-after'] === 'string' && { retryAfter: res.headers['retry-after'] }),
      ...(json.predictions?.[0] !== undefined && { top1: json.predictions[0].label }),
    };
  } catch (err) {
    return { at, body: b, ms: performance.now() - at, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message };
  }
}

/** `concurrency` clients, each sending its next request when its answer arrives, for `seconds`. */
export async function closedLoop(target: Target, concurrency: number, seconds: number): Promise<{ outcomes: LoadOutcome[]; rps: number }> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const outcomes: LoadOutcome[] = [];
  const end = performance.now() + seconds * 1000;
  let n = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) outcomes.push(await one(target, n++, agent));
    }),
  );
  agent.destroy();
  const ok = outcomes.filter((o) => o.status === 200).length;
  return { outcomes, rps: ok / ((performance.now() - started) / 1000) };
}

/** Requests sent at `rate` per second for `seconds`, on schedule; resolves when every one is answered. */
export async function openLoop(
  target: Target,
  rate: number,
  seconds: number,
  onTick?: () => void,
): Promise<LoadOutcome[]> {
  const agent = new Agent({ keepAlive: true, maxSockets: 512 });
  const pending: Promise<LoadOutcome & { body: number }>[] = [];
  const started = performance.now();
  const total = Math.round(rate * seconds);
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    pending.push(one(target, i, agent));
    if (i % Math.max(1, Math.round(rate / 10)) === 0) onTick?.();
  }
  const outcomes = await Promise.all(pending);
  agent.destroy();
  return outcomes.map((o) => {
    const expected = target.labels?.[o.body];
    return o.status === 200 && expected !== undefined && o.top1 !== expected ? { ...o, error: `wrong top-1 ${o.top1 ?? ''}` } : o;
  });
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

export function summarise(outcomes: LoadOutcome[]) {
  const ok = outcomes.filter((o) => o.status === 200 && o.error === undefined);
  const refused = outcomes.filter((o) => o.status === 503);
  const other = outcomes.filter((o) => !(o.status === 200 && o.error === undefined) && o.status !== 503);
  return {
    offered: outcomes.length,
    answered200: ok.length,
    refused503: refused.length,
    refusedByCode: Object.fromEntries(
      [...new Set(refused.map((o) => o.code ?? '?'))].map((c) => [c, refused.filter((o) => o.code === c).length]),
    ),
    lost: other.length,
    p50ms: Math.round(percentile(ok.map((o) => o.ms), 50)),
    p99ms: Math.round(percentile(ok.map((o) => o.ms), 99)),
    refusedP99ms: Math.round(percentile(refused.map((o) => o.ms), 99)),
  };
}

/** ocular_queue_depth for a model, from /metrics. */
export async function queueDepth(port: number, model: string): Promise<number> {
  const res = await send(port, { path: '/metrics' });
  const line = res.body.split('\n').find((l) => l.startsWith(`ocular_queue_depth{model="${model}"}`));
  return line === undefined ? NaN : Number(line.split(' ').pop());
}
