/**
 * Load generators. Closed loop: autocannon keeps `connections` requests in flight, each connection sending its
 * next request when the previous answer arrives (latency from send). Open loop: requests are sent at a fixed
 * arrival rate whatever the server does, and each latency is measured from the request's *scheduled* send time,
 * so time spent waiting for a free connection or for the server counts (no coordinated omission).
 *
 * Bodies are the real photos, round-robin across the whole load (one shared counter), prepared once.
 * Traffic goes only where `url` points; scripts/loadtest.ts and scripts/bench.ts use 127.0.0.1.
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
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
}

/** Closed loop with autocannon for `durationS` seconds. */
export async function closedLoop(target: LoadTarget, connections: number, durationS: number): Promise<LoadResult> {
  let next = 0;
  const { bodies } = target;
  const result = await autocannon({
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
  });
  const statuses: Record<string, number> = {};
  for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = stat.count ?? 0;
  if (result.errors > 0) statuses['socket'] = result.errors - result.timeouts;
  if (result.timeouts > 0) statuses['timeout'] = result.timeouts;
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

/** One request on `agent`; resolves with the status (0 for a socket error). Never rejects. */
function send(agent: http.Agent, url: URL, path: string, b: PreparedBody, timeoutMs: number): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request(
      {
        agent,
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path,
        headers: { 'content-type': b.contentType, 'content-length': b.body.length },
        timeout: timeoutMs,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', () => resolve(0));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
    req.end(b.body);
  });
}

/**
 * Open loop at `rps` for `durationS`: request i is due at start + i/rps and its latency runs from that instant.
 * At most `maxConnections` sockets; a request waiting for one is still on the clock.
 */
export async function openLoop(
  target: LoadTarget,
  rps: number,
  durationS: number,
  maxConnections = 256,
): Promise<LoadResult> {
  const url = new URL(target.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: maxConnections });
  const total = Math.max(1, Math.round(rps * durationS));
  const latencies = new Float64Array(total);
  const okFlags = new Uint8Array(total);
  const statuses: Record<string, number> = {};
  const pending: Promise<void>[] = [];
  const start = performance.now() + 20;
  let sent = 0;
  await new Promise<void>((done) => {
    const tick = (): void => {
      const now = performance.now();
      while (sent < total && start + (sent * 1000) / rps <= now) {
        const i = sent++;
        const due = start + (i * 1000) / rps;
        const b = target.bodies[i % target.bodies.length] as PreparedBody;
        pending.push(
          send(agent, url, target.path, b, 30_000).then((status) => {
            latencies[i] = performance.now() - due;
            const key = status === 0 ? 'socket' : String(status);
            statuses[key] = (statuses[key] ?? 0) + 1;
            if (status >= 200 && status < 300) okFlags[i] = 1;
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
  agent.destroy();
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
