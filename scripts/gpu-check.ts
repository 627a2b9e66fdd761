/**
 * One prepared device run (scripts/gpu-check.sh, which runs this from dist/): the ranked configurations of
 * scripts/gpu-check.configs (format: scripts/lib/gpu-check-plan.ts), each a server from dist/ with a one-model
 * manifest, its /v1/models, then dist/scripts/loadtest.js closed loop at each of its connection counts with the GPU's
 * utilisation and memory sampled once a second (nvidia-smi). Each configuration's figures are written as soon as it
 * ends (OUT/<name>.json, and OUT/summary.md and OUT/summary.json rewritten over every configuration so far), so a
 * run cut short still reports. A configuration that would not fit the time left (BUDGET_S) is skipped and said so.
 *
 *   node dist/scripts/gpu-check.js OUT_DIR [--configs FILE] [--dry-run]
 *
 * Environment: SHARED (models/ and images/, default ../shared), NODE (default this node), DURATION (seconds per
 * load run, default 10), WARMUP (default 2), BUDGET_S (default 480: 8 minutes, server starts included), PORT
 * (default 18080), CLIENT (autocannon or lean, default lean), READY_TIMEOUT_S (default 120), VULKANINFO (default
 * vulkaninfo), NVIDIA_SMI (default nvidia-smi), OCULAR_GPU_DEVICE_ID (default 0), LOG_LEVEL (the server's, default
 * warn). `--dry-run` writes each manifest and a summary of what would run, and starts nothing.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { deviceEnv, gpuStats, manifestFor, parseConfigs, vulkanHasGpu, type CheckConfig } from './lib/gpu-check-plan.js';
import { startOptions } from './lib/server.js';
import { parseManifest } from '../src/config/manifest.js';

// scripts/ under tsx, dist/scripts/ once built.
const root = resolve(import.meta.dirname, basename(dirname(import.meta.dirname)) === 'dist' ? '../..' : '..');
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    configs: { type: 'string', default: join(root, 'scripts/gpu-check.configs') },
    'dry-run': { type: 'boolean', default: false },
  },
});
const outArg = positionals[0];
if (outArg === undefined) {
  process.stderr.write('usage: scripts/gpu-check.sh OUT_DIR [--configs FILE] [--dry-run]\n');
  process.exit(2);
}
const out = resolve(outArg);
mkdirSync(out, { recursive: true });
const env = process.env;
const num = (name: string, fallback: number): number => {
  const v = Number(env[name] ?? fallback);
  if (!(Number.isFinite(v) && v >= 0)) throw new Error(`${name} must be a non-negative number, got ${env[name]}`);
  return v;
};
const dryRun = values['dry-run'];
const shared = resolve(env['SHARED'] ?? join(root, '..', 'shared'));
const node = env['NODE'] ?? process.execPath;
const durationS = num('DURATION', 10);
const warmupS = num('WARMUP', 2);
const budgetS = num('BUDGET_S', 480);
const port = num('PORT', 18080);
const readyTimeoutS = num('READY_TIMEOUT_S', 120);
const client = env['CLIENT'] ?? 'lean';
const url = `http://127.0.0.1:${port}`;
const started = Date.now();
const log = (msg: string): void => void process.stdout.write(`${msg}\n`);

const configs = parseConfigs(readFileSync(values.configs, 'utf8'));
const bases = {
  default: { path: join(root, 'models.manifest.json'), resolvePath: (p: string) => (isAbsolute(p) ? p : resolve(root, p)) },
  shared: {
    path: join(root, 'test/fixtures/shared.manifest.json'),
    // The fixture names the shared folder relative to test/fixtures (../../../shared/...): rebased onto SHARED.
    resolvePath: (p: string) => (isAbsolute(p) ? p : join(shared, p.replace(/^(\.\.\/)+shared\//, ''))),
  },
};

interface Row {
  connections: number;
  throughputRps?: number;
  p50Ms?: number;
  p99Ms?: number;
  non2xx?: number;
  meanBatchSize?: number;
  inferencePerBatchMs?: number;
  cpuMsPerRequest?: number;
  gpu?: ReturnType<typeof gpuStats>;
  error?: string;
}
interface Result {
  name: string;
  config: CheckConfig;
  status: string;
  env?: Record<string, string>;
  readyMs?: number;
  provider?: string;
  stages?: unknown;
  rows: Row[];
}
const results: Result[] = [];

function writeSummary(): void {
  const f = (v: number | undefined, d = 1) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '-');
  const lines = [
    `# gpu-check ${new Date(started).toISOString()}${dryRun ? ' (dry run)' : ''}`,
    '',
    '| configuration | status | provider | uint8 | conns | req/s | p50 ms | p99 ms | non-2xx | mean batch | inference ms/batch | CPU ms/req | GPU util mean/max % | GPU mem max MiB | ready s |',
    '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    const stages = (r.stages ?? []) as { stage: string; uint8Input?: boolean }[];
    const uint8 = stages.length > 0 ? stages.map((s) => `${s.stage}:${s.uint8Input === true ? 'on' : 'off'}`).join(' ') : '-';
    const rows: Row[] = r.rows.length > 0 ? r.rows : [{ connections: NaN }];
    for (const x of rows) {
      lines.push(
        `| ${r.name} | ${x.error ?? r.status} | ${r.provider ?? '-'} | ${uint8} | ${f(x.connections, 0)} | ${f(x.throughputRps)} | ${f(x.p50Ms)} | ${f(x.p99Ms)} | ${f(x.non2xx, 0)} | ${f(x.meanBatchSize, 2)} | ${f(x.inferencePerBatchMs, 2)} | ${f(x.cpuMsPerRequest)} | ${x.gpu ? `${f(x.gpu.utilMeanPct)}/${f(x.gpu.utilMaxPct, 0)}` : '-'} | ${f(x.gpu?.memMaxMiB, 0)} | ${f(r.readyMs === undefined ? undefined : r.readyMs / 1000)} |`,
      );
    }
  }
  writeFileSync(join(out, 'summary.md'), `${lines.join('\n')}\n`);
  writeFileSync(join(out, 'summary.json'), `${JSON.stringify({ started: new Date(started).toISOString(), dryRun, durationS, budgetS, results }, null, 2)}\n`);
}

function finish(result: Result): void {
  results.push(result);
  writeFileSync(join(out, `${result.name}.json`), `${JSON.stringify(result, null, 2)}\n`);
  writeSummary();
  log(`   ${result.status}`);
}

async function get(path: string, timeoutMs = 2000): Promise<{ status: number; body: string } | undefined> {
  try {
    const res = await fetch(`${url}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, body: await res.text() };
  } catch {
    return undefined;
  }
}

async function stop(child: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

function run(cmd: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<number> {
  const child = spawn(cmd, args, { env: { ...env, ...extraEnv }, stdio: ['ignore', 'inherit', 'inherit'] });
  return once(child, 'exit').then(([code]) => (code as number | null) ?? 1);
}

/** nvidia-smi sampling once a second into `file`; undefined where there is no nvidia-smi. */
function sampleGpu(file: string): ChildProcess | undefined {
  const smi = env['NVIDIA_SMI'] ?? 'nvidia-smi';
  if (spawnSync(smi, ['-L'], { stdio: 'ignore' }).status !== 0) return undefined;
  const args = ['--query-gpu=utilization.gpu,memory.used', '--format=csv,noheader,nounits', '-lms', '1000', '-i', env['OCULAR_GPU_DEVICE_ID'] ?? '0', '-f', file];
  return spawn(smi, args, { stdio: 'ignore' });
}

let plannedS = 0;
let vulkanGpu: boolean | undefined;
function haveVulkanGpu(): boolean {
  if (vulkanGpu === undefined) {
    const res = spawnSync(env['VULKANINFO'] ?? 'vulkaninfo', ['--summary'], { encoding: 'utf8', timeout: 30_000 });
    vulkanGpu = res.status === 0 && vulkanHasGpu(res.stdout ?? '');
    writeFileSync(join(out, 'vulkaninfo.txt'), `${res.stdout ?? ''}${res.stderr ?? ''}${res.error ? String(res.error) : ''}`);
  }
  return vulkanGpu;
}

async function runConfig(config: CheckConfig): Promise<void> {
  const name = config.name;
  log(`== ${name} (line ${config.line}, ${new Date().toISOString().slice(11, 19)})`);
  const result: Result = { name, config, status: 'planned', rows: [] };
  const base = bases[config.base];
  const manifestPath = join(out, `${name}.manifest.json`);
  try {
    const manifest = manifestFor(config, JSON.parse(readFileSync(base.path, 'utf8')), base.resolvePath);
    writeFileSync(manifestPath, JSON.stringify(manifest, null, 1));
    // The server's own check, here: a patch naming a field this build does not know fails now, not after a start.
    parseManifest(manifest);
  } catch (err) {
    finish({ ...result, status: `failed: manifest: ${(err as Error).message.replace(/\s+/g, ' ').slice(0, 300)}` });
    return;
  }
  const serverEnv = { ...deviceEnv(config), OCULAR_MANIFEST: manifestPath, PORT: String(port), OCULAR_GRPC_PORT: 'off', HOST: '127.0.0.1', OCULAR_LOG_LEVEL: env['LOG_LEVEL'] ?? 'warn', OCULAR_PLAYGROUND: 'false' };
  result.env = serverEnv;
  const estimateS = 30 + config.connections.length * (warmupS + durationS + 3);
  // A dry run counts the estimates of the configurations before this one instead of the clock.
  const elapsedS = dryRun ? plannedS : (Date.now() - started) / 1000;
  if (elapsedS + estimateS > budgetS) {
    finish({ ...result, status: `skipped: budget (${Math.round(elapsedS)} s used of ${budgetS}, about ${estimateS} s needed)` });
    return;
  }
  if (config.requires === 'vulkan-gpu' && !dryRun && !haveVulkanGpu()) {
    finish({ ...result, status: 'skipped: vulkaninfo lists no GPU (vulkaninfo.txt)' });
    return;
  }
  if (dryRun) {
    plannedS += estimateS;
    log(`   would run: ${Object.entries(serverEnv).map(([k, v]) => `${k}=${v}`).join(' ')} ${node} dist/src/main.js; load at ${config.connections.join(', ')} connections for ${durationS} s each`);
    finish({ ...result, status: `planned (about ${estimateS} s)` });
    return;
  }

  const t0 = Date.now();
  const logFile = join(out, `${name}.log`);
  const server = spawn(node, [...startOptions(join(root, 'package.json')), join(root, 'dist/src/main.js')], {
    env: { ...env, ...serverEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let serverLog = '';
  const keep = (d: Buffer) => void (serverLog = (serverLog + d.toString()).slice(-200_000));
  server.stdout?.on('data', keep);
  server.stderr?.on('data', keep);
  try {
    let ready = false;
    while (Date.now() - t0 < readyTimeoutS * 1000 && server.exitCode === null) {
      if ((await get('/readyz'))?.status === 200) {
        ready = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    if (!ready) {
      finish({ ...result, status: `failed: not ready (${server.exitCode !== null ? `exited ${server.exitCode}` : `${readyTimeoutS} s`}; ${name}.log)` });
      return;
    }
    result.readyMs = Date.now() - t0;
    const models = await get('/v1/models', 10_000);
    if (models !== undefined) {
      writeFileSync(join(out, `${name}.models.json`), models.body);
      const m = (JSON.parse(models.body) as { models: { provider?: string; stages: unknown[] }[] }).models[0];
      if (m?.provider !== undefined) result.provider = m.provider;
      if (m !== undefined) result.stages = m.stages;
    }
    for (const c of config.connections) {
      const label = `${name}-c${c}`;
      const gpuFile = join(out, `${label}.gpu.csv`);
      const sampler = sampleGpu(gpuFile);
      const code = await run(node, [
        join(root, 'dist/scripts/loadtest.js'), '--url', url, '--model', config.model, '--images', join(shared, 'images'), '--mode', 'closed',
        '--client', client, '--concurrency', String(c), '--duration', String(durationS), '--warmup', String(warmupS), '--label', label, '--out', join(out, label),
      ]);
      await stop(sampler, 'SIGTERM', 2000);
      const row: Row = { connections: c };
      if (code !== 0) row.error = `load test exited ${code}`;
      try {
        const report = JSON.parse(readFileSync(join(out, `${label}.json`), 'utf8')) as {
          rows?: { result: { throughputRps: number; latencyMs: { p50: number; p99: number }; statuses: Record<string, number> }; server?: { meanBatchSize: number; inferencePerBatchMs: number; cpuMsPerRequest: number } }[];
        };
        const x = report.rows?.[0];
        if (x !== undefined) {
          Object.assign(row, {
            throughputRps: x.result.throughputRps,
            p50Ms: x.result.latencyMs.p50,
            p99Ms: x.result.latencyMs.p99,
            non2xx: Object.entries(x.result.statuses).filter(([s]) => !/^2\d\d$/.test(s)).reduce((a, [, n]) => a + n, 0),
            ...(x.server !== undefined && { meanBatchSize: x.server.meanBatchSize, inferencePerBatchMs: x.server.inferencePerBatchMs, cpuMsPerRequest: x.server.cpuMsPerRequest }),
          });
        }
      } catch {
        row.error ??= 'no load report';
      }
      if (sampler !== undefined && existsSync(gpuFile)) row.gpu = gpuStats(readFileSync(gpuFile, 'utf8'));
      result.rows.push(row);
      writeFileSync(join(out, `${name}.json`), `${JSON.stringify(result, null, 2)}\n`);
    }
    finish({ ...result, status: 'done' });
  } finally {
    await stop(server);
    writeFileSync(logFile, serverLog);
  }
}

if (!dryRun && !existsSync(join(root, 'dist/src/main.js'))) {
  process.stderr.write('dist/src/main.js missing: run npm run build\n');
  process.exit(2);
}
log(`gpu-check: ${configs.length} configurations from ${values.configs}, budget ${budgetS} s, ${durationS} s per load run, out ${out}${dryRun ? ' (dry run)' : ''}`);
for (const config of configs) await runConfig(config);
log(`gpu-check: ${results.filter((r) => r.status === 'done').length} of ${results.length} done in ${Math.round((Date.now() - started) / 1000)} s; ${join(out, 'summary.md')}`);
