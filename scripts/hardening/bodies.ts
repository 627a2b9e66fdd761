/**
 * Decide before reading (issue 18, item 2), full size: --count (default 8) concurrent bodies of --size-mib
 * (default 200) MiB each, as JSON and as binary tensors, to /v2 infer of a served model and of an unknown one,
 * against a real server on 127.0.0.1. Prints, as JSON, per case: the statuses and codes, the bytes each client
 * got to send before its answer, the server's RSS peak and after, its event-loop lag (max, from /metrics) and
 * GET /healthz latency meanwhile (probed every 100 ms). Bounded: each case stops after --seconds (default 120).
 * `npx tsx scripts/hardening/bodies.ts [--count 8] [--size-mib 200] [--seconds 120]`
 */
import { request as httpRequest } from 'node:http';
import { send } from '../../test/helpers/hostile.js';
import { arg, scrape, serve } from './common.js';

const count = arg('count', 8);
const sizeMiB = arg('size-mib', 200);
const seconds = arg('seconds', 120);
const size = Math.floor(sizeMiB * 1024 * 1024);
const { server, port } = await serve(['mobilenetv2']);

interface Sent {
  status: number;
  code: string;
  sentBytes: number;
  ms: number;
}

/** Streams one body of `size` bytes (JSON tensor data or a binary tensor after a JSON header) from a repeated chunk. */
function post(path: string, kind: 'json' | 'binary', deadline: number): Promise<Sent> {
  const started = performance.now();
  const numbers = Math.floor((size - 80) / 4);
  const head =
    kind === 'json'
      ? `{"inputs":[{"name":"input","shape":[${numbers}],"datatype":"FP32","data":[`
      : JSON.stringify({ inputs: [{ name: 'input', shape: [Math.floor(size / 4)], datatype: 'FP32', parameters: { binary_data_size: Math.floor(size / 4) * 4 } }] });
  const tail = kind === 'json' ? '0.5]}]}' : '';
  const bodyBytes = kind === 'json' ? Buffer.byteLength(head) + (numbers - 1) * 4 + Buffer.byteLength(tail) : Buffer.byteLength(head) + Math.floor(size / 4) * 4;
  const chunk = Buffer.from(kind === 'json' ? '0.5,'.repeat(16 * 1024) : '\0'.repeat(64 * 1024));
  return new Promise((resolve) => {
    let sentBytes = 0;
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream', 'content-length': String(bodyBytes) };
    if (kind === 'binary') headers['inference-header-content-length'] = String(Buffer.byteLength(head));
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path, headers, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        let code: string;
        try {
          code = (JSON.parse(text) as { code?: string }).code ?? '';
        } catch {
          code = 'unparsed answer';
        }
        resolve({ status: res.statusCode ?? 0, code, sentBytes, ms: Math.round(performance.now() - started) });
      });
    });
    req.on('error', (err) => resolve({ status: 0, code: (err as NodeJS.ErrnoException).code ?? 'error', sentBytes, ms: Math.round(performance.now() - started) }));
    req.setTimeout(Math.max(1, deadline - performance.now()), () => req.destroy(new Error('deadline')));
    req.write(head);
    sentBytes += Buffer.byteLength(head);
    const body = kind === 'json' ? bodyBytes - Buffer.byteLength(tail) : bodyBytes;
    const pump = (): void => {
      while (sentBytes < body && !req.destroyed) {
        const piece = chunk.subarray(0, Math.min(chunk.length, body - sentBytes));
        sentBytes += piece.length;
        if (!req.write(piece)) {
          req.once('drain', pump);
          return;
        }
      }
      if (!req.destroyed) req.end(tail);
    };
    pump();
  });
}

async function runCase(name: string, path: string, kind: 'json' | 'binary'): Promise<Record<string, unknown>> {
  const deadline = performance.now() + seconds * 1000;
  const rssBefore = (await scrape(port))['process_resident_memory_bytes'] ?? NaN;
  let rssPeak = rssBefore;
  let lagMax = 0;
  const healthMs: number[] = [];
  let running = true;
  const probing = (async () => {
    while (running) {
      healthMs.push((await send(port, { path: '/healthz', timeoutMs: 10_000 })).ms);
      const m = await scrape(port);
      rssPeak = Math.max(rssPeak, m['process_resident_memory_bytes'] ?? 0);
      lagMax = Math.max(lagMax, m['nodejs_eventloop_lag_max_seconds'] ?? 0);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const results = await Promise.all(Array.from({ length: count }, () => post(path, kind, deadline)));
  running = false;
  await probing;
  await new Promise((r) => setTimeout(r, 2000));
  const rssAfter = (await scrape(port))['process_resident_memory_bytes'] ?? NaN;
  const mib = (b: number) => Math.round(b / 1024 / 1024);
  return {
    case: name,
    statuses: results.map((r) => `${r.status} ${r.code}`),
    sentMiB: results.map((r) => mib(r.sentBytes)),
    answerMs: results.map((r) => r.ms),
    rssMiB: { before: mib(rssBefore), peak: mib(rssPeak), after: mib(rssAfter) },
    eventLoopLagMaxMs: Math.round(lagMax * 1000),
    healthzMs: { max: Math.round(Math.max(...healthMs)), probes: healthMs.length },
  };
}

const figures = { count, sizeMiB };
const cases = [
  await runCase('unknown model, JSON', '/v2/models/nope/infer', 'json'),
  await runCase('served model, JSON', '/v2/models/mobilenetv2/infer', 'json'),
  await runCase('served model, binary', '/v2/models/mobilenetv2/infer', 'binary'),
];
process.stdout.write(`${JSON.stringify({ ...figures, cases, processAlive: server.child.exitCode === null }, null, 2)}\n`);
server.kill();
process.exit(server.child.exitCode === null ? 0 : 1);
