/**
 * The dashboard against a real Prometheus (Debian's `prometheus`, started here) scraping a live Ocular every second
 * under a little load: successful predictions on two models, a 404 (an unknown model), a 415 (bytes that are no
 * image) and bursts at a one-slot queue (503 QUEUE_FULL, counted as dropped). Then every panel's query, with the
 * template variables at "All", is run through Prometheus's HTTP API and must return at least one finite value, and
 * every query variable must list values.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { writeSubsetManifest } from '../helpers/manifest-subset.js';
import { haveShared, imagePath, sharedTestOptions } from '../helpers/shared.js';
import { findExecutable, requireExecutable, toolTestOptions } from '../helpers/tools.js';
import { queryPanels, readDashboard, substitute } from './dashboard.js';

const PROMETHEUS = findExecutable('prometheus', '/usr/bin/prometheus');
const SHARED = ['models/mobilenetv2-12-int8/model.onnx', 'models/yolox-nano/model.onnx', 'images/cat_chelsea.png', 'images/street_notice_sign.jpg'];
const JOB = 'ocular';
/** Template variables at "All" (their allValue), as Grafana sends them. */
const VARIABLES = { job: JOB, instance: '.*', model: '.*' };

function testOptions(): { skip?: string; timeout: number } {
  const skip = toolTestOptions(PROMETHEUS, 'prometheus').skip ?? sharedTestOptions(...SHARED).skip;
  return { timeout: 100_000, ...(skip !== undefined ? { skip } : {}) };
}

/**
 * mobilenetv2 with a one-slot queue and batches of one (so that bursts overflow it: QUEUE_FULL, dropped), and
 * yolox-nano as it is (so that bursts batch).
 */
function writeManifest(dir: string): string {
  return writeSubsetManifest(dir, ['mobilenetv2', 'yolox-nano'], {
    mobilenetv2: { batching: { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 1 } },
  });
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}${last !== undefined ? `: ${String(last)}` : ''}`);
}

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

t.test('every panel query returns data from a real Prometheus scraping a live Ocular', testOptions(), async (t) => {
  if (!requireExecutable(t, PROMETHEUS, 'prometheus') || !haveShared(t, ...SHARED)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ocular-prometheus-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  const { app } = await buildTestApp(t, { manifestPath: writeManifest(dir) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  const ocular = `http://127.0.0.1:${address.port}`;

  const promPort = await freePort();
  const prom = `http://127.0.0.1:${promPort}`;
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      `  - job_name: ${JOB}`,
      '    scrape_interval: 1s',
      '    scrape_timeout: 900ms',
      '    static_configs:',
      `      - targets: ['127.0.0.1:${address.port}']`,
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(
    PROMETHEUS as string,
    [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const keep = (b: Buffer) => {
    output = (output + b.toString('utf8')).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
    rmSync(dir, { recursive: true, force: true });
  });

  const query = async (expr: string): Promise<Sample[]> => {
    const res = await fetch(`${prom}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: Sample[] } };
    if (body.status !== 'success') throw new Error(`${expr}: ${body.error ?? res.status}`);
    return body.data?.result ?? [];
  };

  try {
    await waitFor('Prometheus to be ready', async () => ((await fetch(`${prom}/-/ready`)).ok ? true : undefined), 20_000);
    await waitFor('Prometheus to scrape Ocular', async () => ((await query(`up{job="${JOB}"} == 1`)).length === 1 ? true : undefined), 15_000);
  } catch (err) {
    t.fail(`${(err as Error).message}; prometheus said:\n${output}`);
    return;
  }

  // A little load, for about five scrapes.
  const cat = readFileSync(imagePath('cat_chelsea.png'));
  const street = readFileSync(imagePath('street_notice_sign.jpg'));
  const post = (model: string, body: Buffer, type = 'application/octet-stream') =>
    fetch(`${ocular}/v1/models/${model}/predict`, { method: 'POST', headers: { 'content-type': type }, body }).then((r) => r.status);
  const statuses = new Map<number, number>();
  const count = (codes: number[]) => codes.forEach((c) => statuses.set(c, (statuses.get(c) ?? 0) + 1));
  const loadUntil = Date.now() + 5_000;
  for (let round = 0; Date.now() < loadUntil; round++) {
    const batch = [post('mobilenetv2', cat), post('yolox-nano', street), post('yolox-nano', street), post('yolox-nano', street)];
    if (round % 3 === 0) batch.push(post('no-such-model', cat), post('mobilenetv2', Buffer.from('these bytes are no image')));
    if (round % 4 === 0) for (let i = 0; i < 12; i++) batch.push(post('mobilenetv2', cat));
    count(await Promise.all(batch));
    await sleep(100);
  }
  t.comment(`load answered: ${JSON.stringify(Object.fromEntries(statuses))}`);
  t.ok((statuses.get(200) ?? 0) > 0 && statuses.has(404) && statuses.has(415), 'successes, 404s and 415s were sent');
  t.ok(statuses.has(503), 'bursts overflowed the one-slot queue (503 QUEUE_FULL)');

  const dashboard = readDashboard();
  const targets = queryPanels(dashboard).flatMap((p) =>
    (p.targets ?? []).map((tg) => ({ name: `${p.title} / ${tg.refId}`, expr: substitute(tg.expr, VARIABLES, '1m') })),
  );
  t.ok(targets.length >= 20, `${targets.length} panel queries`);
  // Poll until each query has a finite value (the last scrapes after the load may still be on their way).
  const results = new Map<string, Sample[]>();
  const errors = new Map<string, string>();
  const pending = async () => {
    for (const target of targets) {
      if ((results.get(target.name) ?? []).some((s) => Number.isFinite(Number(s.value[1])))) continue;
      try {
        results.set(target.name, await query(target.expr));
      } catch (err) {
        errors.set(target.name, (err as Error).message);
      }
    }
    return targets.every((tg) => (results.get(tg.name) ?? []).some((s) => Number.isFinite(Number(s.value[1])))) ? true : undefined;
  };
  await waitFor('every panel query to return data', pending, 20_000, 1_000).catch(() => undefined);
  for (const target of targets) {
    const samples = results.get(target.name) ?? [];
    const finite = samples.filter((s) => Number.isFinite(Number(s.value[1])));
    t.ok(finite.length > 0, `${target.name}: ${finite.length} series with data`, {
      expr: target.expr,
      samples: samples.slice(0, 3),
      error: errors.get(target.name),
    });
  }

  // The variables' label_values(...) queries, through the label-values API Grafana uses.
  for (const v of dashboard.templating.list.filter((x) => x.type === 'query')) {
    const q = typeof v.query === 'string' ? v.query : String((v.query as { query?: string }).query ?? '');
    const m = /^label_values\((.+), (\w+)\)$/.exec(substitute(q, VARIABLES));
    t.ok(m, `${v.name}: a label_values query`);
    if (m === null) continue;
    const res = await fetch(`${prom}/api/v1/label/${m[2]}/values?match[]=${encodeURIComponent(m[1] as string)}`);
    const body = (await res.json()) as { data: string[] };
    t.ok(body.data.length > 0, `$${v.name} lists ${JSON.stringify(body.data)}`);
  }
  const models = (await query('ocular_model_info')).map((s) => s.metric['model']).sort();
  t.same(models, ['mobilenetv2', 'yolox-nano'], 'the provider table lists both models');
});
