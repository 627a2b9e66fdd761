/**
 * The real server as a child process (src/main.ts through tsx) for the hardening tests and scripts: its JSON log on
 * stdout is the record of what it accepted and answered.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { projectRoot } from './shared.js';

export interface ChildServer {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  stderr: () => string;
  port: Promise<number>;
  waitFor(match: (line: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  kill(): void;
}

/**
 * The child's environment: this process's minus test-runner hooks and OCULAR_* settings, plus `env`. gRPC is off
 * unless `env` sets OCULAR_GRPC_PORT (its default, 8081, would collide between servers started in parallel).
 */
function childEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k === 'NODE_OPTIONS' || k.startsWith('TAP') || k.startsWith('_TAPJS') || k.startsWith('OCULAR_')) continue;
    base[k] = v;
  }
  return { ...base, HOST: '127.0.0.1', PORT: '0', OCULAR_GRPC_PORT: 'off', OCULAR_DEVICE: 'cpu', OCULAR_INTRA_OP_THREADS: '1', ...env };
}

/**
 * Starts src/main.ts with `env` (and CLI `args`); kill it in the test's teardown (`t.teardown(server.kill)`).
 * `openFileLimit` runs it under `ulimit -n` (soft and hard) through bash, which then execs node (same pid).
 * `nodeOptions` go to node itself, before the script (some, such as --cpu-prof, are refused in NODE_OPTIONS).
 */
export function startServer(
  env: Record<string, string>,
  args: readonly string[] = [],
  opts: { openFileLimit?: number; nodeOptions?: readonly string[] } = {},
): ChildServer {
  const nodeArgs = [...(opts.nodeOptions ?? []), '--import', 'tsx', 'src/main.ts', ...args];
  const [command, commandArgs] =
    opts.openFileLimit === undefined
      ? [process.execPath, nodeArgs]
      : ['bash', ['-c', `ulimit -n ${Math.floor(opts.openFileLimit)} && exec "$0" "$@"`, process.execPath, ...nodeArgs]];
  const child = spawn(command, commandArgs, {
    cwd: projectRoot,
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  const waiters: { match: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] = [];
  let rest = '';
  let stderr = '';
  let rawStdout = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    rawStdout += chunk;
    rest += chunk;
    const parts = rest.split('\n');
    rest = parts.pop() ?? '';
    for (const text of parts) {
      if (text.trim() === '') continue;
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        line = { msg: text, raw: true };
      }
      line['_at'] = performance.now();
      lines.push(line);
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i];
        if (w !== undefined && w.match(line)) {
          waiters.splice(i, 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: performance.now() })),
  );
  const waitFor = (match: (l: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>> => {
    const seen = lines.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      waiters.push({ match, resolve });
      void exited.then(({ code, signal }) =>
        reject(new Error(`server exited (${code ?? signal}) before ${what}; stdout: ${rawStdout.slice(-2000)} stderr: ${stderr.slice(-2000)}`)),
      );
    });
  };
  // With a quiet log level the "listening" line is not logged: pass a PORT (freePort()) instead.
  const port =
    env['PORT'] !== undefined && env['PORT'] !== '0'
      ? Promise.resolve(Number(env['PORT']))
      : waitFor((l) => String(l['msg']).startsWith('Server listening at http://127.0.0.1:'), 'listening').then((l) => {
          const m = /:(\d+)$/.exec(String(l['msg']));
          return Number(m?.[1]);
        });
  // A server that exits before listening (a bad config, --help) rejects `port`; only a caller that awaits it cares.
  port.catch(() => {});
  return {
    child,
    lines,
    stderr: () => stderr,
    port,
    waitFor,
    exited,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Request ids the server logged as received ("incoming request"). */
export function receivedIds(server: ChildServer): Set<string> {
  return new Set(
    server.lines.filter((l) => l['msg'] === 'incoming request' && typeof l['reqId'] === 'string').map((l) => l['reqId'] as string),
  );
}

/** A TCP port free right now on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Polls /readyz until 200 (or the process exits, or `timeoutMs`). */
export async function waitReady(server: ChildServer, port: number, timeoutMs = 120_000): Promise<void> {
  const { send } = await import('./hostile.js');
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (server.child.exitCode !== null) throw new Error(`server exited ${server.child.exitCode}: ${server.stderr().slice(-2000)}`);
    const status = await send(port, { path: '/readyz' }).then((r) => r.status, () => 0);
    if (status === 200) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('server not ready in time');
}
