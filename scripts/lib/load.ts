/**
 * Load generators. Closed loop: `connections` requests in flight, each connection sending its next request when
 * the previous answer arrives (latency from send), driven by autocannon or by the lean client of
 * `http1-pool.ts`. Open loop: requests are sent at a fixed arrival rate whatever the server does, and each
 * latency is measured from the request's *scheduled* send time, so time spent waiting for a free connection or
 * for the server counts (no coordinated omission).
 *
 * Bodies are the real photos, round-robin across the whole load (one shared counter), prepared once.
 * Traffic goes only where `url` points; scripts/loadtest.ts and scripts/bench.ts use 127.0.0.1.
 */
import { spawn } from 'node:child_process';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { buildRequest, Http1Pool, type SendOutcome } from './http1-pool.js';
import type { PreparedBody } from './photos.js';
import { summarize, type LatencySummary } from './stats.js';

export interface LoadTarget {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  /** Request path with query, e.g. /v1/models/mobilenetv2/predict */
  path: string;
  bodies: readonly PreparedBody[];
}

export function predictPath(model: string, query = ''): string {
  return `/v1/models/${encodeURIComponent(model)}/predict${query.length > 0 ? `?${query}` : ''}`;
}

export interface LoadResult {
  mode: 'closed' | 'open';
  /** Closed loop: connections. Open loop: connections allowed (the agent's socket cap). */
  connections: number;
  /** Open loop only: the arrival rate asked for, requests per second. */
  targetRps?: number;
  durationS: number;
  /** Answers received (any status). */
  requests: number;
  /** 2xx answers per second. */
  throughputRps: number;
  latencyMs: LatencySummary;
  /** Answers by HTTP status, plus 'socket' for connection errors and 'timeout' for requests never answered. */
  statuses: Record<string, number>;
  /** Open and rate-limited loops: the latency of each kind of answer (a refusal's too), keyed as `statuses`. */
  latencyByStatusMs?: Record<string, LatencySummary>;
}

/**
 * The closed loop's client. `autocannon` (the default of scripts/loadtest.ts) builds each request anew, since the
 * body changes from one request to the next; `lean` (scripts/bench.ts) writes prebuilt buffers and costs less than
 * half the CPU per request (docs/PERFORMANCE.md), which matters when it shares the server's cores.
 */
export type LoadClient = 'autocannon' | 'lean';
export const LOAD_CLIENTS: readonly LoadClient[] = ['autocannon', 'lean'];

/** Closed loop for `durationS` seconds with `client`. */
export function closedLoop(
  target: LoadTarget,
  connections: number,
  durationS: number,
  client: LoadClient = 'autocannon',
): Promise<LoadResult> {
  return client === 'lean' ? leanClosedLoop(target, connections, durationS) : autocannonClosedLoop(target, connections, durationS);
}

/** autocannon's options for POSTs of `target`'s bodies, round-robin, built anew for each request. */
function autocannonOptions(target: LoadTarget, durationS: number, connections: number): autocannon.Options {
  let next = 0;
  const { bodies } = target;
  return {
    url: new URL(target.path, target.url).href,
    method: 'POST',
    connections,
    duration: durationS,
    timeout: 30,
    requests: [
      {
        setupRequest: (req) => {
          const b = bodies[next++ % bodies.length] as PreparedBody;
          return { ...req, method: 'POST', body: b.body, headers: { ...req.headers, 'content-type': b.contentType } };
        },
      },
    ],
  };
}

/** An autocannon result's answers by status, with 'socket' and 'timeout' as the lean client counts them. */
function autocannonStatuses(result: autocannon.Result): Record<string, number> {
  const statuses: Record<string, number> = {};
  for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = stat.count ?? 0;
  if (result.errors > 0) statuses['socket'] = result.errors - result.timeouts;
  if (result.timeouts > 0) statuses['timeout'] = result.timeouts;
  return statuses;
}

async function autocannonClosedLoop(target: LoadTarget, connections: number, durationS: number): Promise<LoadResult> {
  const result = await autocannon(autocannonOptions(target, durationS, connections));
  const statuses = autocannonStatuses(result);
  const ok = result['2xx'];
  const l = result.latency;
  return {
    mode: 'closed',
    connections,
    durationS: result.duration,
    requests: Object.values(statuses).reduce((a, b) => a + b, 0),
    throughputRps: ok / result.duration,
    latencyMs: { count: ok, mean: l.mean, p50: l.p50, p90: l.p90, p99: l.p99, max: l.max },
    statuses,
  };
}

function requestsOf(target: LoadTarget): Buffer[] {
  const url = new URL(target.url);
  return target.bodies.map((b) => buildRequest(url, target.path, b.contentType, b.body));
}

function outcomeKey(outcome: SendOutcome): string {
  return typeof outcome === 'number' ? String(outcome) : outcome;
}

/**
 * Closed loop with the lean client: `connections` loops, each on a socket of its own, send request after request
 * until `durationS` has passed; answers still in flight then are not counted (as autocannon does).
 */
async function leanClosedLoop(target: LoadTarget, connections: number, durationS: number): Promise<LoadResult> {
  const requests = requestsOf(target);
  const pool = new Http1Pool(new URL(target.url), connections, 30_000);
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};
  let next = 0;
  let stopped = false;
  const until = performance.now() + durationS * 1000;
  const loop = async (): Promise<void> => {
    while (!stopped && performance.now() < until) {
      const sentAt = performance.now();
      const outcome = await pool.send(requests[next++ % requests.length] as Buffer);
      const now = performance.now();
      // Cut off by the deadline (the timer below may fire a fraction of a millisecond before it): not counted.
      if (stopped || now > until) return;
      const key = outcomeKey(outcome);
      statuses[key] = (statuses[key] ?? 0) + 1;
      if (typeof outcome === 'number' && outcome >= 200 && outcome < 300) latencies.push(now - sentAt);
      // A refused or reset connection must not become a busy loop of reconnects.
      else if (outcome === 'socket') await new Promise((r) => setTimeout(r, 10));
    }
  };
  const loops = Promise.all(Array.from({ length: connections }, loop));
  // At the deadline the sockets go, so that a request the server is still holding does not extend the run.
  await new Promise((r) => setTimeout(r, Math.max(0, until - performance.now())));
  stopped = true;
  pool.destroy();
  await loops;
  return {
    mode: 'closed',
    connections,
    durationS,
    requests: Object.values(statuses).reduce((a, b) => a + b, 0),
    throughputRps: latencies.length / durationS,
    latencyMs: summarize(latencies),
    statuses,
  };
}

/**
 * Open loop at `rps` for `durationS`: request i is due at start + i/rps and its latency runs from that instant.
 * At most `maxConnections` sockets (the lean client's pool); a request waiting for one is still on the clock.
 */
export async function openLoop(
  target: LoadTarget,
  rps: number,
  durationS: number,
  maxConnections = 256,
): Promise<LoadResult> {
  const requests = requestsOf(target);
  const pool = new Http1Pool(new URL(target.url), maxConnections, 30_000);
  const total = Math.max(1, Math.round(rps * durationS));
  const latencies = new Float64Array(total);
  const okFlags = new Uint8Array(total);
  const statuses: Record<string, number> = {};
  const byStatus = new LatencyByStatus();
  const pending: Promise<void>[] = [];
  const start = performance.now() + 20;
  let sent = 0;
  await new Promise<void>((done) => {
    const tick = (): void => {
      const now = performance.now();
      while (sent < total && start + (sent * 1000) / rps <= now) {
        const i = sent++;
        const due = start + (i * 1000) / rps;
        pending.push(
          pool.send(requests[i % requests.length] as Buffer).then((outcome) => {
            latencies[i] = performance.now() - due;
            const key = outcomeKey(outcome);
            statuses[key] = (statuses[key] ?? 0) + 1;
            byStatus.add(key, latencies[i] as number);
            if (typeof outcome === 'number' && outcome >= 200 && outcome < 300) okFlags[i] = 1;
          }),
        );
      }
      if (sent >= total) {
        done();
        return;
      }
      const wait = start + (sent * 1000) / rps - performance.now();
      setTimeout(tick, Math.max(0, Math.floor(wait)));
    };
    tick();
  });
  await Promise.all(pending);
  const elapsedS = (performance.now() - start) / 1000;
  pool.destroy();
  const ok: number[] = [];
  for (let i = 0; i < total; i++) if (okFlags[i] === 1) ok.push(latencies[i] as number);
  return {
    mode: 'open',
    connections: maxConnections,
    targetRps: rps,
    durationS: elapsedS,
    requests: total,
    throughputRps: ok.length / elapsedS,
    latencyMs: summarize(ok),
    statuses,
    latencyByStatusMs: byStatus.summaries(),
  };
}

/** Latencies kept per answer kind, for the refusals' latency beside the answers'. */
class LatencyByStatus {
  private readonly samples = new Map<string, number[]>();

  add(key: string, ms: number): void {
    const list = this.samples.get(key);
    if (list === undefined) this.samples.set(key, [ms]);
    else list.push(ms);
  }

  summaries(): Record<string, LatencySummary> {
    return Object.fromEntries([...this.samples].map(([key, list]) => [key, summarize(list)]));
  }
}

/**
 * autocannon at a fixed overall rate (`overallRate`) for `durationS`, on `connections` sockets: the load a user's
 * own autocannon run offers. Unlike `openLoop` it is not a true open loop: a connection sends its next request only
 * after the answer to the last, so when every socket waits on the server the offered rate falls, and each latency
 * runs from the request's actual send (autocannon corrects its own histogram for that; the per-status figures here
 * are the raw ones). Answers are kept per status, as `openLoop` keeps them.
 */
export async function autocannonRateLoop(target: LoadTarget, rps: number, durationS: number, connections = 256): Promise<LoadResult> {
  const rate = Math.max(1, Math.round(rps));
  const byStatus = new LatencyByStatus();
  const ok: number[] = [];
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon({ ...autocannonOptions(target, durationS, Math.min(connections, rate)), overallRate: rate }, (err, res) =>
      err === null || err === undefined ? resolve(res) : reject(err instanceof Error ? err : new Error(String(err))),
    );
    instance.on('response', (_client: unknown, statusCode: number, _bytes: number, ms: number) => {
      byStatus.add(String(statusCode), ms);
      if (statusCode >= 200 && statusCode < 300) ok.push(ms);
    });
  });
  const statuses = autocannonStatuses(result);
  return {
    mode: 'open',
    connections,
    targetRps: rps,
    durationS: result.duration,
    requests: Object.values(statuses).reduce((a, b) => a + b, 0),
    throughputRps: result['2xx'] / result.duration,
    latencyMs: summarize(ok),
    statuses,
    latencyByStatusMs: byStatus.summaries(),
  };
}

/**
 * Polls `path` every `intervalMs` from a child process of its own (scripts/lib/probe-child.ts), as a kubelet's
 * liveness probe would, so that the latency measured is the server's and the machine's, not the delay of this
 * process's event loop, which is busy driving the load. Resolves once the child's first probe was answered.
 */
export async function probeLatency(
  baseUrl: string,
  intervalMs = 50,
  path = '/healthz',
): Promise<{ stop(): Promise<LatencySummary> }> {
  // The sibling of this file: probe-child.ts run with tsx from sources, probe-child.js once built.
  const ext = extname(fileURLToPath(import.meta.url));
  const script = fileURLToPath(new URL(`./probe-child${ext}`, import.meta.url));
  const child = spawn(process.execPath, [...(ext === '.ts' ? ['--import', 'tsx'] : []), script, baseUrl, String(intervalMs), path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: string): void => {
      out += chunk;
      if (out.includes('ready\n')) {
        out = out.slice(out.indexOf('ready\n') + 'ready\n'.length);
        child.stdout.off('data', onData);
        child.stdout.on('data', (more: string) => (out += more));
        resolve();
      }
    };
    child.stdout.on('data', onData);
    child.once('error', reject);
    void exited.then((code) => reject(new Error(`the probe process exited with code ${code} before its first probe`)));
  });
  return {
    async stop() {
      child.stdin.end();
      const code = await exited;
      if (code !== 0) throw new Error(`the probe process exited with code ${code}`);
      return summarize(JSON.parse(out.trim()) as number[]);
    },
  };
}
