/**
 * The bench's liveness prober (scripts/lib/probe-child.ts via probeLatency): a process of its own polls the path
 * until stopped and reports every latency. The server here answers after a fixed delay, so every sample has a known
 * lower bound: a logical check of what is measured, not a timing threshold on Ocular.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { probeLatency } from '../../scripts/lib/load.js';

t.test('probeLatency polls from a child process until stopped, each sample at least the server delay', async (t) => {
  const delayMs = 30;
  const paths: string[] = [];
  const server = http.createServer((req, res) => {
    paths.push(req.url ?? '');
    setTimeout(() => res.end('ok'), delayMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const { port } = server.address() as AddressInfo;
  const probe = await probeLatency(`http://127.0.0.1:${port}`, 20, '/healthz');
  await new Promise((resolve) => setTimeout(resolve, 600));
  const summary = await probe.stop();
  t.ok(summary.count >= 3, `${summary.count} probes in 0.6 s`);
  t.ok(paths.length >= summary.count, 'every sample is a request the server saw (plus the first, unsampled one)');
  t.ok(paths.every((p) => p === '/healthz'), 'only the path asked for');
  t.ok(summary.p50 >= delayMs && summary.max >= summary.p50, `p50 ${summary.p50.toFixed(1)} ms is at least the ${delayMs} ms delay`);
});

t.test('a prober whose server is gone still stops and reports the failed probes', async (t) => {
  const server = http.createServer((_req, res) => res.end('ok'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const probe = await probeLatency(`http://127.0.0.1:${port}`, 10);
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await new Promise((resolve) => setTimeout(resolve, 200));
  const summary = await probe.stop();
  t.ok(summary.count >= 1, `${summary.count} failed probes counted with their elapsed time`);
});
