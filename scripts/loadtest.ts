/**
 * Load test for any running Ocular (or any server with the same predict route): real photos, round-robin, as raw
 * bodies or multipart; a closed-loop concurrency sweep and/or an open-loop fixed arrival rate; or, with --grpc,
 * a closed loop of gRPC ModelInfer calls (lib/grpc-load.ts). Writes a JSON report and a Markdown table. Run
 * `npm run loadtest -- --help`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { closedLoop, LOAD_CLIENTS, openLoop, predictPath, type LoadClient, type LoadTarget } from './lib/load.js';
import { loadPhotos, prepareBody, type BodyKind } from './lib/photos.js';
import { grpcClosedLoop } from './lib/grpc-load.js';
import { diffMetrics, scrapeMetrics } from './lib/prom.js';
import { loadTable, type LoadRow } from './lib/report.js';

const HELP = `npm run loadtest -- [options]

Drives a running Ocular with the photos in --images, round-robin, and reports throughput, latency
(p50/p90/p99/max), errors by status and, from /metrics read before and after each run, the mean batch size
and the split of a request's time between queue, preprocessing and inference.

Modes
  closed   closed loop: for each value of --concurrency, that many connections each send the next request
           when the previous answer arrives (--client). Latency runs from each send.
  open     open loop: requests arrive at --rate per second whatever the server does; latency runs from each
           request's scheduled send time, so queueing (in the client or the server) is not hidden.
  both     closed sweep, then open loop.

Options
  --url URL            server base URL (default http://127.0.0.1:8080)
  --model NAME         model to call (default mobilenetv2): POST /v1/models/NAME/predict
  --query Q            query string for predict, e.g. top_k=1 (default none)
  --images DIR         photos to send (default $OCULAR_SHARED_DIR/images, else ../shared/images)
  --body raw|multipart raw image bodies (default) or one-file multipart/form-data bodies
  --mode M             closed | open | both (default closed)
  --concurrency LIST   closed-loop connections, comma-separated (default 1,4,16,64)
  --rate LIST          open-loop arrival rates in requests/s, comma-separated (default 50)
  --max-connections N  open-loop socket cap (default 256)
  --client C           closed-loop client: autocannon (default) or lean, a minimal keep-alive HTTP/1.1
                       client that writes prebuilt requests (about 0.2 ms of CPU per request against
                       autocannon's 0.55 here: worth it when the load generator shares the server's cores;
                       scripts/bench.ts uses it). The open loop always uses the lean client's socket pool.
  --duration S         seconds per run (default 10)
  --warmup S           seconds of unmeasured load before the first run (default 2)
  --out PATH           report path without extension: writes PATH.json and PATH.md (default .cache/loadtest/report)
  --label TEXT         name of this target in the report (default the URL)
  --grpc HOST:PORT     closed loop over gRPC instead of HTTP: ModelInfer on Ocular's gRPC port, each photo
                       as a BYTES input with classification 5 (the /v1 predict's work), --concurrency calls
                       in flight on one channel; /metrics still read from --url (closed mode only)
  -h, --help           this text

Example
  OCULAR_MANIFEST=test/fixtures/shared.manifest.json npm start &
  npm run loadtest -- --mode both --concurrency 1,16 --rate 60 --duration 15
`;

interface LoadtestOptions {
  url: string;
  model: string;
  query: string;
  images: string;
  body: BodyKind;
  mode: 'closed' | 'open' | 'both';
  concurrency: number[];
  rate: number[];
  maxConnections: number;
  client: LoadClient;
  durationS: number;
  warmupS: number;
  out: string;
  label: string;
  /** host:port of the gRPC listener: the closed loop runs over gRPC. */
  grpc: string | undefined;
}

function numbers(value: string, name: string): number[] {
  const list = value.split(',').map((v) => Number(v.trim()));
  if (list.length === 0 || list.some((n) => !(n > 0))) throw new Error(`--${name} must be positive numbers, got ${value}`);
  return list;
}

function parseLoadtestArgs(argv: string[]): LoadtestOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8080' },
      model: { type: 'string', default: 'mobilenetv2' },
      query: { type: 'string', default: '' },
      images: { type: 'string' },
      body: { type: 'string', default: 'raw' },
      mode: { type: 'string', default: 'closed' },
      concurrency: { type: 'string', default: '1,4,16,64' },
      rate: { type: 'string', default: '50' },
      'max-connections': { type: 'string', default: '256' },
      client: { type: 'string', default: 'autocannon' },
      duration: { type: 'string', default: '10' },
      warmup: { type: 'string', default: '2' },
      out: { type: 'string', default: '.cache/loadtest/report' },
      label: { type: 'string' },
      grpc: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  if (values.body !== 'raw' && values.body !== 'multipart') throw new Error(`--body must be raw or multipart`);
  if (values.mode !== 'closed' && values.mode !== 'open' && values.mode !== 'both') {
    throw new Error('--mode must be closed, open or both');
  }
  if (values.grpc !== undefined && values.mode !== 'closed') throw new Error('--grpc runs the closed loop only (--mode closed)');
  const client = LOAD_CLIENTS.find((c) => c === values.client);
  if (client === undefined) throw new Error(`--client must be ${LOAD_CLIENTS.join(' or ')}`);
  const shared = process.env['OCULAR_SHARED_DIR'] ?? '../shared';
  return {
    url: values.url,
    model: values.model,
    query: values.query,
    images: resolve(values.images ?? join(shared, 'images')),
    body: values.body,
    mode: values.mode,
    concurrency: numbers(values.concurrency, 'concurrency').map(Math.round),
    rate: numbers(values.rate, 'rate'),
    maxConnections: Math.round(numbers(values['max-connections'], 'max-connections')[0] as number),
    client,
    durationS: numbers(values.duration, 'duration')[0] as number,
    warmupS: Number(values.warmup),
    out: values.out,
    label: values.label ?? (values.grpc !== undefined ? `grpc://${values.grpc}` : values.url),
    grpc: values.grpc,
  };
}

async function runLoadtest(o: LoadtestOptions): Promise<LoadRow[]> {
  const photos = loadPhotos(o.images);
  const target: LoadTarget = { url: o.url, path: predictPath(o.model, o.query), bodies: photos.map((p) => prepareBody(p, o.body)) };
  const grpcTarget = o.grpc !== undefined ? { address: o.grpc, model: o.model, photos } : undefined;
  const closed = (c: number, seconds: number) =>
    grpcTarget !== undefined ? grpcClosedLoop(grpcTarget, c, seconds) : closedLoop(target, c, seconds, o.client);
  if (o.warmupS > 0) await closed(Math.max(...o.concurrency, 4), o.warmupS);
  const rows: LoadRow[] = [];
  const measure = async (run: () => ReturnType<typeof closedLoop>) => {
    const before = await scrapeMetrics(o.url);
    const result = await run();
    const after = await scrapeMetrics(o.url);
    const server = before && after ? diffMetrics(before, after, o.model) : undefined;
    rows.push({ label: o.label, result, server });
    process.stderr.write(`${loadTable(rows.slice(-1)).split('\n')[2]}\n`);
  };
  if (o.mode !== 'open') for (const c of o.concurrency) await measure(() => closed(c, o.durationS));
  if (o.mode !== 'closed') for (const r of o.rate) await measure(() => openLoop(target, r, o.durationS, o.maxConnections));
  return rows;
}

function writeReport(out: string, meta: object, rows: readonly LoadRow[]): void {
  mkdirSync(dirname(resolve(out)), { recursive: true });
  writeFileSync(`${out}.json`, `${JSON.stringify({ ...meta, rows }, null, 2)}\n`);
  writeFileSync(`${out}.md`, loadTable(rows));
}

async function main(): Promise<void> {
  const o = parseLoadtestArgs(process.argv.slice(2));
  if (o === 'help') {
    process.stdout.write(HELP);
    return;
  }
  const rows = await runLoadtest(o);
  writeReport(o.out, { date: new Date().toISOString(), options: o }, rows);
  process.stdout.write(loadTable(rows));
  process.stdout.write(`\nwrote ${o.out}.json and ${o.out}.md\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`loadtest: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
