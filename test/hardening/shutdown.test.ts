/**
 * Shutdown (issue #5, part 5), on the real server process: SIGTERM under steady load loses no accepted request
 * (each gets its real answer), new requests during the drain get 503 (or find the listener closed), the process
 * exits 0 within the grace; a second SIGTERM, or the grace running out, ends it with every remaining request
 * answered 503 DRAINING, none left hanging.
 *
 * "Accepted" is what the server logged as an incoming request (its request id); "lost" is an accepted request
 * whose client got no complete answer. Lost must be 0.
 */
import { readFileSync } from 'node:fs';
import { Agent } from 'node:http';
import t, { type Test } from 'tap';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { send, writeManifest } from '../helpers/hostile.js';
import { receivedIds, startServer, type ChildServer } from '../helpers/server.js';

const SHARED = ['models/mobilenetv2-12-int8/model.onnx', 'models/yolox-nano/model.onnx', 'images/cat_chelsea.png', 'images/soccer_player.jpg'];

interface Outcome {
  id: string;
  sentAt: number;
  status?: number;
  code?: string;
  retryAfter?: string;
  label?: string;
  error?: string;
}

async function predict(port: number, id: string, path: string, body: Buffer, agent: Agent | false): Promise<Outcome> {
  const sentAt = performance.now();
  try {
    const res = await send(port, { path, body, headers: { 'content-type': 'application/octet-stream', 'x-request-id': id }, agent, timeoutMs: 60_000 });
    const json = JSON.parse(res.body) as { code?: string; predictions?: { label: string }[]; detections?: unknown[] };
    return {
      id,
      sentAt,
      status: res.status,
      ...(json.code !== undefined && { code: json.code }),
      ...(typeof res.headers['retry-after'] === 'string' && { retryAfter: res.headers['retry-after'] }),
      ...(json.predictions?.[0] !== undefined && { label: json.predictions[0].label }),
      ...(json.detections !== undefined && { label: 'detections' }),
    };
  } catch (err) {
    return { id, sentAt, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message };
  }
}

/** Checks that every accepted request got a complete, real answer; returns the figures. */
function account(t: Test, server: ChildServer, outcomes: Outcome[], okLabel: string) {
  const accepted = receivedIds(server);
  const lost = outcomes.filter((o) => accepted.has(o.id) && o.status === undefined);
  const neverAccepted = outcomes.filter((o) => !accepted.has(o.id));
  const ok = outcomes.filter((o) => o.status === 200);
  const refused = outcomes.filter((o) => o.status === 503);
  t.same(lost.map((o) => `${o.id}: ${o.error ?? ''}`), [], 'no accepted request lost its answer');
  t.same(
    neverAccepted.filter((o) => o.status !== undefined).map((o) => o.id),
    [],
    'every answered request was logged as accepted (the accounting is sound)',
  );
  t.same(
    [...new Set(neverAccepted.map((o) => o.error))].filter((e) => !['ECONNREFUSED', 'ECONNRESET', 'socket hang up'].includes(String(e))),
    [],
    'requests never accepted were refused at the connection (listener closed)',
  );
  t.ok(ok.every((o) => o.label === okLabel), `every 200 is a real prediction (${okLabel})`);
  t.ok(refused.every((o) => o.code === 'DRAINING' && o.retryAfter === '1'), 'every 503 is DRAINING with Retry-After: 1');
  t.equal(ok.length + refused.length + neverAccepted.length, outcomes.length, 'nothing else happened');
  return { offered: outcomes.length, accepted: accepted.size, ok: ok.length, refused503: refused.length, refusedConnection: neverAccepted.length, lost: lost.length };
}

t.test('SIGTERM under steady load: every accepted request answered, exit 0 within the grace', sharedTestOptions(...SHARED), async (t) => {
  const graceMs = 20_000;
  const manifest = writeManifest(t.testdir(), ['mobilenetv2']);
  const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_SHUTDOWN_GRACE_MS: String(graceMs) });
  t.teardown(() => server.kill());
  const port = await server.port;
  await server.waitFor((l) => l['msg'] === 'ready', 'ready');
  const photo = readFileSync(imagePath('cat_chelsea.png'));

  const outcomes: Outcome[] = [];
  let stop = false;
  let n = 0;
  const agents = Array.from({ length: 3 }, () => new Agent({ keepAlive: true, maxSockets: 1 }));
  t.teardown(() => agents.forEach((a) => a.destroy()));
  // 6 clients in closed loops: 3 on keep-alive connections (they see the drain's 503s), 3 opening a connection
  // per request (they find the listener closed). Each stops at its first refused connection.
  const loop = async (i: number): Promise<void> => {
    const agent = i < 3 ? (agents[i] as Agent) : false;
    while (!stop) {
      const o = await predict(port, `steady-${i}-${n++}`, '/v1/models/mobilenetv2/predict', photo, agent);
      outcomes.push(o);
      if (o.error !== undefined) return;
    }
  };
  const loops = Array.from({ length: 6 }, (_, i) => loop(i));
  await new Promise((r) => setTimeout(r, 1500));
  const signalAt = performance.now();
  server.child.kill('SIGTERM');
  setTimeout(() => (stop = true), 3000).unref();
  await Promise.all(loops);
  const exit = await server.exited;

  const figures = account(t, server, outcomes, 'Egyptian cat');
  const afterSignal = outcomes.filter((o) => o.sentAt > signalAt);
  t.ok(outcomes.filter((o) => o.status === 200 && o.sentAt < signalAt).length > 0, 'requests before the signal answered 200');
  t.ok(afterSignal.length > 0, `${afterSignal.length} requests were sent during the drain`);
  t.ok(afterSignal.every((o) => o.status !== 200 || o.sentAt - signalAt < 50), 'requests sent during the drain are refused (503 or connection refused)');
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'exit 0');
  const exitMs = exit.at - signalAt;
  t.ok(exitMs < graceMs, `exited ${exitMs.toFixed(0)} ms after SIGTERM, within the ${graceMs} ms grace`);
  t.comment(`figures: ${JSON.stringify({ ...figures, exitMs: Math.round(exitMs) })}`);
});

/** Starts yolox-nano one request at a time with a long queue, and offers `n` requests at once. */
async function backlog(t: Test, graceMs: number, n: number) {
  const manifest = writeManifest(t.testdir(), ['yolox-nano'], (m) => ({
    ...m,
    batching: { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 1024, timeoutMs: 120_000 },
  }));
  const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_SHUTDOWN_GRACE_MS: String(graceMs), OCULAR_REQUEST_TIMEOUT_MS: '120000' });
  t.teardown(() => server.kill());
  const port = await server.port;
  await server.waitFor((l) => l['msg'] === 'ready', 'ready');
  const photo = readFileSync(imagePath('soccer_player.jpg'));
  const outcomes = Array.from({ length: n }, (_, i) => predict(port, `backlog-${i}`, '/v1/models/yolox-nano/predict', photo, false));
  // Signal once every request is in and the first answers are out: the rest wait in the queue or run.
  await server.waitFor(() => receivedIds(server).size === n, 'every request received');
  await server.waitFor((l) => l['msg'] === 'request completed', 'a first answer');
  return { server, outcomes };
}

t.test('the grace running out answers every remaining request 503, then exits 1', sharedTestOptions(...SHARED), async (t) => {
  const graceMs = 1500;
  const { server, outcomes } = await backlog(t, graceMs, 120);
  const signalAt = performance.now();
  server.child.kill('SIGTERM');
  const results = await Promise.all(outcomes);
  const exit = await server.exited;
  const figures = account(t, server, results, 'detections');
  t.ok(figures.refused503 > 0, `${figures.refused503} requests still waiting were answered 503 DRAINING`);
  t.equal(exit.code, 1, 'exit 1: work was left unfinished');
  const exitMs = exit.at - signalAt;
  t.ok(exitMs < graceMs + 5000, `exited ${exitMs.toFixed(0)} ms after SIGTERM (grace ${graceMs} ms, at most 1 s to write the 503s)`);
  t.ok(server.lines.some((l) => l['msg'] === 'forced shutdown: answering the remaining requests 503'), 'the forced shutdown is logged');
  t.comment(`figures: ${JSON.stringify({ ...figures, exitMs: Math.round(exitMs) })}`);
});

t.test('a second SIGTERM ends the drain at once, every remaining request answered 503', sharedTestOptions(...SHARED), async (t) => {
  const graceMs = 60_000;
  const { server, outcomes } = await backlog(t, graceMs, 120);
  const signalAt = performance.now();
  server.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  server.child.kill('SIGTERM');
  const results = await Promise.all(outcomes);
  const exit = await server.exited;
  const figures = account(t, server, results, 'detections');
  t.ok(figures.refused503 > 0, `${figures.refused503} requests answered 503 DRAINING`);
  t.equal(exit.code, 1, 'exit 1');
  const exitMs = exit.at - signalAt;
  t.ok(exitMs < 10_000, `exited ${exitMs.toFixed(0)} ms after the first SIGTERM, long before the ${graceMs} ms grace`);
  t.comment(`figures: ${JSON.stringify({ ...figures, exitMs: Math.round(exitMs) })}`);
});
