/**
 * What tracing costs: `dist/src/main.js` serving mobilenetv2 with tracing off, and on with every request sampled
 * (OTEL_TRACES_SAMPLER=always_on) and exported over OTLP/HTTP to a sink in this process that reads and discards the
 * exports (a collector's network cost is not the server's). Interleaved pairs, in alternating order, so that a noisy
 * neighbour hits both sides alike; a closed loop of raw photos at --connections; requests/s and the server's CPU per
 * answered request (process_cpu_seconds_total over the requests counted by its metrics), the figure a shared machine
 * disturbs least. Then, in this process, what the spans of one request cost the main thread alone: a request's server
 * span with its stages and a batch of one, through the real SDK and batch processor to an exporter that discards,
 * in CPU microseconds per request (the server's figures above are dominated by inference). The figures in
 * docs/PERFORMANCE.md ("Tracing") come from it.
 *
 *   npx tsx scripts/bench-tracing.ts [--rounds 2] [--duration 6] [--connections 8] [--out PATH]
 *
 * Needs the shared models and photos ($OCULAR_SHARED_DIR, default ../shared) and a build (dist/: npm run build).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { setImmediate as tick } from 'node:timers/promises';
import { pino } from 'pino';
import { createTracing } from '../src/plugins/tracing.js';
import { closedLoop, predictPath } from './lib/load.js';
import { loadPhotos, prepareBody } from './lib/photos.js';
import { diffMetrics, scrapeMetrics } from './lib/prom.js';
import { freePort, startOptions, startServer } from './lib/server.js';
import { fmt, spread } from './lib/stats.js';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    duration: { type: 'string', default: '6' },
    connections: { type: 'string', default: '8' },
    out: { type: 'string', default: join(root, '.cache/bench/tracing') },
  },
});
const rounds = Number(values.rounds);
const durationS = Number(values.duration);
const connections = Number(values.connections);
const MODEL = 'mobilenetv2';
const log = (msg: string): void => void process.stderr.write(`[tracing ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

const mainJs = join(root, 'dist/src/main.js');
if (!existsSync(mainJs)) throw new Error('dist/src/main.js missing: npm run build');
const sharedDir = resolve(root, process.env['OCULAR_SHARED_DIR'] ?? '../shared');
const fixtures = join(root, 'test/fixtures');
const entry = (JSON.parse(readFileSync(join(fixtures, 'shared.manifest.json'), 'utf8')) as { models: Record<string, unknown>[] }).models.find((m) => m['name'] === MODEL);
if (entry === undefined) throw new Error(`${MODEL} is not in the fixture manifest`);
const workDir = resolve(`${values.out}.work`);
mkdirSync(workDir, { recursive: true });
const manifest = join(workDir, 'manifest.json');
writeFileSync(
  manifest,
  JSON.stringify({ models: [{ ...entry, source: resolve(fixtures, String(entry['source'])), labels: resolve(fixtures, String(entry['labels'])) }] }),
);

// The sink: an OTLP/HTTP endpoint that reads each export and answers success.
let exportedBytes = 0;
let exports = 0;
const sink = createServer((req, res) => {
  req.on('data', (c: Buffer) => (exportedBytes += c.length));
  req.on('end', () => {
    exports++;
    res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
  });
});
await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}/v1/traces`;

const bodies = loadPhotos(join(sharedDir, 'images')).map((p) => prepareBody(p, 'raw'));
type Side = 'off' | 'on';
const result: Record<Side, { rps: number[]; cpuMsPerRequest: number[]; exportedBytesPerRequest: number[] }> = {
  off: { rps: [], cpuMsPerRequest: [], exportedBytesPerRequest: [] },
  on: { rps: [], cpuMsPerRequest: [], exportedBytesPerRequest: [] },
};
for (let r = 0; r < rounds; r++) {
  for (const side of r % 2 === 0 ? (['off', 'on'] as const) : (['on', 'off'] as const)) {
    const port = await freePort();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      OCULAR_LOG_LEVEL: 'warn',
      OCULAR_DEVICE: 'cpu',
      OCULAR_PLAYGROUND: 'false',
      HOST: '127.0.0.1',
      PORT: String(port),
      OCULAR_MANIFEST: manifest,
      OCULAR_CACHE_DIR: join(workDir, 'cache'),
      OCULAR_TRACING: side === 'on' ? 'true' : 'false',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: sinkUrl,
      OTEL_TRACES_SAMPLER: 'always_on',
    };
    const server = await startServer({ name: `tracing-${side}`, args: [...startOptions(join(root, 'package.json')), mainJs], env, readyPath: '/readyz', port, cwd: root });
    try {
      const target = { url: server.url, path: predictPath(MODEL), bodies };
      await closedLoop(target, connections, 1, 'lean');
      const before = await scrapeMetrics(server.url);
      const bytes0 = exportedBytes;
      const res = await closedLoop(target, connections, durationS, 'lean');
      const after = await scrapeMetrics(server.url);
      result[side].rps.push(res.throughputRps);
      if (before && after) result[side].cpuMsPerRequest.push(diffMetrics(before, after, MODEL).cpuMsPerRequest);
      // Exports lag by the batch processor's delay (5 s): bytes per request over the run is an estimate.
      result[side].exportedBytesPerRequest.push((exportedBytes - bytes0) / Math.max(1, res.requests));
      log(`round ${r + 1} ${side}: ${fmt(res.throughputRps)} req/s, CPU ${fmt(result[side].cpuMsPerRequest.at(-1) ?? NaN, 2)} ms/request, ${fmt(result[side].exportedBytesPerRequest.at(-1) ?? NaN, 0)} exported bytes/request`);
    } finally {
      await server.stop();
    }
  }
}
sink.close();

// The spans of one request, in process: µs of CPU per request, median of 5 runs of 5000 requests.
const tracing = await createTracing(
  { protocol: 'http/protobuf', url: 'http://127.0.0.1:9/v1/traces' },
  { version: 'bench', logger: pino({ level: 'warn' }), createExporter: async () => ({ export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} }) },
);
const perRequestUs: number[] = [];
const carrier = { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' };
for (let rep = 0; rep < 6; rep++) {
  const n = 5000;
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const span = tracing.startServerSpan({ transport: 'http', name: 'POST', carrier, attributes: { 'http.request.method': 'POST', 'url.path': '/v1/models/m/predict' } });
    if (span === undefined) throw new Error('tracing is off');
    span.route('POST /v1/models/:name/predict', { 'http.route': '/v1/models/:name/predict', 'ocular.request_id': `r${i}` });
    span.model('m', '1');
    const t0 = performance.now();
    span.stage('preprocess', t0, t0 + 1);
    const batch = tracing.batches?.startBatch({ model: 'm', version: '1', stage: 'main', provider: 'cpu', size: 1, kind: 'images' });
    batch?.end();
    span.run({ outputs: {}, inferenceMs: 1, queueMs: 1, batchSize: 1, enqueuedAt: t0 + 1, batch: batch?.link });
    span.stage('postprocess', t0 + 3, t0 + 4);
    span.end(200);
    // Let the batch processor export as it would between requests.
    if (i % 100 === 99) await tick();
  }
  const c = process.cpuUsage(c0);
  if (rep > 0) perRequestUs.push((c.user + c.system) / n);
}
await tracing.shutdown();
log(`in process: ${perRequestUs.map((v) => fmt(v)).join(', ')} µs of CPU per request`);

const med = (v: number[]) => spread(v).median;
const ratio = (on: number, off: number) => fmt(on / off, 3);
const lines = [
  `# Tracing on (sampled 1.0, OTLP/HTTP to a local sink) against off: ${MODEL}, ${connections} connections, ${rounds} interleaved pairs of ${durationS} s`,
  '',
  '| side | req/s (each run) | CPU ms/request (each run) | exported bytes/request |',
  '|---|---:|---:|---:|',
  ...(['off', 'on'] as const).map((s) => `| ${s} | ${result[s].rps.map((v) => fmt(v)).join(', ')} | ${result[s].cpuMsPerRequest.map((v) => fmt(v, 2)).join(', ')} | ${fmt(med(result[s].exportedBytesPerRequest), 0)} |`),
  '',
  `on/off, medians: throughput ${ratio(med(result.on.rps), med(result.off.rps))}, CPU per request ${ratio(med(result.on.cpuMsPerRequest), med(result.off.cpuMsPerRequest))}; exports received: ${exports}`,
  '',
  `In process, the spans of one request (server, preprocess, queue, inference, postprocess, a batch of one) through the SDK to a discarding exporter: ${perRequestUs.map((v) => fmt(v)).join(', ')} µs of CPU per request (median ${fmt(med(perRequestUs))}).`,
];
process.stdout.write(`${lines.join('\n')}\n`);
writeFileSync(`${values.out}.md`, `${lines.join('\n')}\n`);
writeFileSync(`${values.out}.json`, `${JSON.stringify({ date: new Date().toISOString(), rounds, durationS, connections, result, exports, perRequestUs }, null, 2)}\n`);
