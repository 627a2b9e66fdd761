/**
 * Starts and stops the processes the benchmark measures, each a child process of its own on 127.0.0.1, so that
 * no contender shares an event loop or a thread pool with the load generator or with another contender.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

export interface RunningServer {
  name: string;
  url: string;
  child: ChildProcess;
  /** From spawn to ready (readiness 200), milliseconds. */
  readyMs: number;
  stop(): Promise<void>;
}

/**
 * The node options `npm start` gives Ocular (package.json's start script, `node <options> dist/src/main.js`), so
 * that the bench measures Ocular as it is started, not a bare `node dist/src/main.js`.
 */
export function startOptions(packageJson: string): string[] {
  const start = (JSON.parse(readFileSync(packageJson, 'utf8')) as { scripts?: { start?: string } }).scripts?.start ?? '';
  const words = start.trim().split(/\s+/);
  const main = words.indexOf('dist/src/main.js');
  if (words[0] !== 'node' || main < 0) throw new Error(`package.json's start script is not "node [options] dist/src/main.js": ${start}`);
  return words.slice(1, main);
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const address = srv.address();
  srv.close();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

async function waitFor(url: string, child: ChildProcess, timeoutMs: number, stderr: () => string): Promise<void> {
  const until = performance.now() + timeoutMs;
  while (performance.now() < until) {
    if (child.exitCode !== null) throw new Error(`${url}: process exited with ${child.exitCode}\n${stderr()}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${url} not ready within ${timeoutMs} ms\n${stderr()}`);
}

export interface StartOptions {
  name: string;
  /** argv for `node` (script first). */
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Path polled until it answers 200: /readyz for Ocular, /healthz for the handler. */
  readyPath: string;
  port: number;
  cwd: string;
  timeoutMs?: number;
}

export async function startServer(o: StartOptions): Promise<RunningServer> {
  const url = `http://127.0.0.1:${o.port}`;
  const t0 = performance.now();
  // gRPC off unless asked for (its default port, 8081, would collide between servers run side by side).
  const child = spawn(process.execPath, o.args, { cwd: o.cwd, env: { OCULAR_GRPC_PORT: 'off', ...o.env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
  });
  try {
    await waitFor(`${url}${o.readyPath}`, child, o.timeoutMs ?? 60_000, () => err);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  const readyMs = performance.now() - t0;
  return {
    name: o.name,
    url,
    child,
    readyMs,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * CPU seconds (user + system, every thread) a child process has used so far, from /proc (Linux); NaN elsewhere.
 * CPU per request is the figure a noisy, shared machine disturbs least: throughput there depends on what the
 * neighbours do, the work each request costs much less.
 */
export function cpuSecondsOf(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of proc(5) (utime, stime), counted from the state field (3): indexes 11 and 12 here.
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}
/** USER_HZ: 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;

/** Runs a node script to completion and returns its last stdout line parsed as JSON. */
export async function runJson<T>(args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<T> {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  const last = out.trim().split('\n').pop() ?? '';
  if (code !== 0) throw new Error(`node ${args.join(' ')} exited with ${code}\n${err}`);
  return JSON.parse(last) as T;
}
