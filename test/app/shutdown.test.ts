/**
 * The real server as a child process (src/main.ts through tsx): startup failures, --help, and a SIGTERM during
 * load. The server's JSON log on stdout is the record of what it did and in which order.
 */
import { readFileSync } from 'node:fs';
import { Agent } from 'node:http';
import t, { type Test } from 'tap';
import { sharedManifestPath, sharedModels, writeManifest } from '../helpers/app.js';
import { send } from '../helpers/hostile.js';
import { type ChildServer, startServer as startChild } from '../helpers/server.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';

/** The real server as a child process, killed when the test ends. */
function startServer(t: Test, env: Record<string, string>, args: string[] = []): ChildServer {
  const server = startChild(env, args);
  t.teardown(server.kill);
  return server;
}

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const YOLOX = 'models/yolox-nano/model.onnx';
const SHARED_ALL = [
  MOBILENET,
  YOLOX,
  'models/ultraface-rfb-320/model.onnx',
  'models/ppocrv4-det/model.onnx',
  'models/ppocrv4-rec/model.onnx',
  'images/cat_chelsea.png',
  'images/soccer_player.jpg',
];
const GRACE_MS = 20_000;

/** The shared manifest (absolute paths, so it can live in a temp dir), models edited by `edit`. */
function editedManifest(dir: string, edit: (models: Record<string, unknown>[]) => Record<string, unknown>[]): string {
  return writeManifest(edit(sharedModels()) as Parameters<typeof writeManifest>[0], dir);
}

/** The `code` of a JSON error body, or the body itself when it is not one. */
function codeOf(body: string): string {
  try {
    return String((JSON.parse(body) as { code?: unknown }).code);
  } catch {
    return body.slice(0, 100);
  }
}

function portOf(line: Record<string, unknown>): number {
  const m = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(String(line['msg']));
  if (m === null) throw new Error(`no port in ${JSON.stringify(line)}`);
  return Number(m[1]);
}

const listening = (l: Record<string, unknown>): boolean => String(l['msg']).startsWith('Server listening at http://127.0.0.1:');

t.test('SIGTERM during load answers every accepted request and exits 0', sharedTestOptions(...SHARED_ALL), async (t) => {
  const server = startServer(t, {
    OCULAR_MANIFEST: sharedManifestPath,
    OCULAR_SHUTDOWN_GRACE_MS: String(GRACE_MS),
    OCULAR_LOG_LEVEL: 'info',
  });
  const port = portOf(await server.waitFor(listening, 'listening'));
  t.ok(port > 0, `listening on port ${port}`);
  await server.waitFor((l) => l['msg'] === 'ready', 'the models are ready');
  const ready = await send(port, { method: 'GET', path: '/readyz' });
  t.equal(ready.status, 200, '/readyz 200 once the models are loaded');

  // A keep-alive connection opened before the signal, to ask readiness on it afterwards.
  const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => keepAlive.destroy());
  t.equal((await send(port, { method: 'GET', path: '/healthz', agent: keepAlive })).status, 200);

  const cat = readFileSync(imagePath('cat_chelsea.png'));
  const soccer = readFileSync(imagePath('soccer_player.jpg'));
  const N = 40;
  const ids = Array.from({ length: N }, (_, i) => `load-${i}`);
  const outcomes = ids.map((id, i) =>
    send(port, {
      method: 'POST',
      path: i % 2 === 0 ? '/v1/models/yolox-nano/predict' : '/v1/models/mobilenetv2/predict',
      body: i % 2 === 0 ? soccer : cat,
      headers: { 'content-type': 'application/octet-stream', 'x-request-id': id },
    }).then(
      (answer) => ({ id, answer, error: undefined }),
      (error: Error) => ({ id, answer: undefined, error }),
    ),
  );

  // Signal once the server has accepted every connection and read every request's headers: each of them was
  // sent, and received, before the SIGTERM.
  const incoming = new Set<string>();
  await server.waitFor((l) => {
    if (l['msg'] === 'incoming request' && typeof l['reqId'] === 'string' && ids.includes(l['reqId'])) incoming.add(l['reqId']);
    return incoming.size === N;
  }, 'every request is accepted');
  server.child.kill('SIGTERM');
  await server.waitFor((l) => l['msg'] === 'shutting down: draining', 'the server handles the signal');

  // Readiness turns 503 (or the listener is already closed) as soon as the signal is handled; never 200 again.
  const readiness = await send(port, { method: 'GET', path: '/readyz', agent: keepAlive }).then(
    (a) => String(a.status),
    (e: NodeJS.ErrnoException) => e.code ?? e.message,
  );
  t.ok(['503', 'ECONNREFUSED', 'ECONNRESET'].includes(readiness), `/readyz after SIGTERM: ${readiness}`);
  // New work is refused: a clean 503 DRAINING, or no connection at all once the listener is closed.
  const late = await send(port, {
    method: 'POST',
    path: '/v1/models/mobilenetv2/predict',
    body: cat,
    headers: { 'content-type': 'application/octet-stream' },
  }).then(
    (a) => (a.status === 503 ? `503 ${codeOf(a.body)}` : String(a.status)),
    (e: NodeJS.ErrnoException) => e.code ?? e.message,
  );
  t.ok(['503 DRAINING', 'ECONNREFUSED', 'ECONNRESET'].includes(late), `a prediction sent after SIGTERM: ${late}`);

  const results = await Promise.all(outcomes);
  const exit = await server.exited;

  const failed = results.filter((r) => r.error !== undefined).map((r) => `${r.id}: ${r.error?.message ?? ''}`);
  t.same(failed, [], 'no request accepted before the signal lost its connection');
  const statuses = results.map((r) => r.answer?.status);
  t.ok(statuses.every((s) => s === 200 || s === 503), `every answer is complete: 200 or 503 (${statuses.join(',')})`);
  for (const r of results) {
    if (r.answer?.status === 503) {
      t.equal(codeOf(r.answer.body), 'DRAINING', `${r.id}: a 503 is DRAINING`);
      t.equal(r.answer.headers['retry-after'], '1', `${r.id}: with Retry-After`);
    } else if (r.answer?.status === 200) {
      const body = JSON.parse(r.answer.body) as { predictions?: unknown[]; detections?: unknown[] };
      t.ok(Array.isArray(body.predictions ?? body.detections), `${r.id}: a full prediction`);
    }
  }
  const ok = statuses.filter((s) => s === 200).length;
  t.comment(`${ok} of ${N} answered 200, ${N - ok} answered 503 DRAINING`);

  // The server's own record: work in flight at the signal finished after it, then the process shut down.
  const drainAt = server.lines.findIndex((l) => l['msg'] === 'shutting down: draining');
  t.ok(drainAt >= 0, 'the server logged the start of the drain');
  const completedAfter = server.lines
    .slice(drainAt)
    .filter((l) => l['msg'] === 'request completed' && typeof l['reqId'] === 'string' && ids.includes(l['reqId']));
  t.ok(
    completedAfter.some((l) => (l['res'] as { statusCode?: number } | undefined)?.statusCode === 200),
    `requests in flight at the signal were answered 200 after it (${completedAfter.length} completed after the signal)`,
  );
  t.ok(
    server.lines.findIndex((l) => l['msg'] === 'shut down') > drainAt,
    'then it logged "shut down"',
  );
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'the process exits 0 (within the grace period: its timer would exit 1)');
  t.notOk(server.lines.some((l) => l['msg'] === 'shutdown grace expired, exiting with work unfinished'), 'the grace period did not expire');
});

t.test('a bad config value stops startup, naming the variable', async (t) => {
  const server = startServer(t, { OCULAR_DEVICE: 'gpu', OCULAR_MANIFEST: sharedManifestPath });
  const exit = await server.exited;
  t.ok(exit.code !== null && exit.code !== 0, `exit code ${exit.code} is non-zero`);
  t.match(server.stderr(), /OCULAR_DEVICE/, 'stderr names OCULAR_DEVICE');
  t.match(server.stderr(), /"gpu"/, 'and the bad value');
  t.notOk(server.lines.some(listening), 'it never listened');
});

t.test('--help lists the variables and exits 0', async (t) => {
  const server = startServer(t, {}, ['--help']);
  let out = '';
  server.child.stdout?.on('data', (c: string) => (out += c));
  const exit = await server.exited;
  t.same({ code: exit.code, signal: exit.signal }, { code: 0, signal: null });
  const text = out + server.lines.map((l) => String(l['msg'])).join('\n');
  for (const name of ['OCULAR_MANIFEST', 'OCULAR_DEVICE', 'PORT', 'HOST', 'OCULAR_BODY_LIMIT_BYTES', 'OCULAR_SHUTDOWN_GRACE_MS', '--help']) {
    t.match(text, name, `lists ${name}`);
  }
});

t.test('a manifest whose input width the model contradicts stops startup, naming the model and the field', sharedTestOptions(MOBILENET), async (t) => {
  const manifest = editedManifest(t.testdir(), (models) => {
    const mobilenet = models.find((m) => m['name'] === 'mobilenetv2');
    if (mobilenet === undefined) throw new Error('mobilenetv2 is not in the shared manifest');
    // The resize keeps the manifest valid on its own (crop 300 wide needs a shorter side of at least 300): only
    // the model, whose input is 224 wide, can refuse it.
    const input = mobilenet['input'] as Record<string, unknown>;
    return [{ ...mobilenet, input: { ...input, width: 300, resize: { mode: 'shorter-side-center-crop', shorterSide: 320 } } }];
  });
  const server = startServer(t, { OCULAR_MANIFEST: manifest });
  const exit = await server.exited;
  t.ok(exit.code !== null && exit.code !== 0, `exit code ${exit.code} is non-zero`);
  const log = server.lines.map((l) => JSON.stringify(l)).join('\n') + server.stderr();
  const fatal = server.lines.find((l) => l['level'] === 60);
  t.ok(fatal, 'a fatal line was logged');
  const fatalText = JSON.stringify(fatal ?? {});
  t.match(fatalText, 'mobilenetv2', 'it names the model');
  t.match(fatalText, 'input.width', 'and the field');
  t.match(log, /300/, 'and the bad value');
  t.notOk(server.lines.some((l) => l['msg'] === 'ready'), 'it never became ready');
});
