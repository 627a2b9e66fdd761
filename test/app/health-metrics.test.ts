/**
 * Health, readiness, model descriptions, OpenAPI, metrics and logs of a real app on the shared models.
 * Metrics are asserted by deltas between two scrapes, so the warm-up batches and earlier subtests do not matter.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import t from 'tap';
import type { Test } from 'tap';
import { candidateSizes } from '../../src/core/batch-tuning.js';
import type { ModelDescription, StageDescription } from '../../src/core/model-handle.js';
import { testHooksOf } from '../../src/core/runner/fault-injection.js';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const SHARED = [
  MOBILENET,
  'models/yolox-nano/model.onnx',
  'models/ultraface-rfb-320/model.onnx',
  'models/ppocrv4-det/model.onnx',
  'models/ppocrv4-rec/model.onnx',
  'models/deeplabv3-mobilenetv2-voc/model.onnx',
  'images/cat_chelsea.png',
  'images/soccer_player.jpg',
];
const MODELS = ['mobilenetv2', 'yolox-nano', 'ultraface', 'ocr', 'ocr-det', 'ocr-rec', 'deeplabv3', 'deeplabv3-seg'];

interface Readiness {
  status: string;
  models: { name: string; version: string; state: string; provider?: string }[];
}

const catPng = (): Buffer => readFileSync(imagePath('cat_chelsea.png'));
const soccerJpg = (): Buffer => readFileSync(imagePath('soccer_player.jpg'));

function predict(app: FastifyInstance, model: string, body: Buffer, headers: Record<string, string> = {}) {
  return app.inject({
    method: 'POST',
    url: `/v1/models/${model}/predict`,
    headers: { 'content-type': 'application/octet-stream', ...headers },
    payload: body,
  });
}

/** A manifest with only mobilenetv2, for small apps that load quickly. */
function mobilenetOnlyManifest(dir: string): string {
  return writeManifest([sharedModel('mobilenetv2')], dir);
}

// ---- A tiny Prometheus text-format parser: enough for counters, gauges and histograms. ----

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const m of text.matchAll(re)) {
    labels[m[1] as string] = (m[2] as string).replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
  }
  return labels;
}

function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (m === null) throw new Error(`unparsable metrics line: ${line}`);
    const raw = m[3] as string;
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw);
    samples.push({ name: m[1] as string, labels: parseLabels(m[2] ?? ''), value });
  }
  return samples;
}

class Scrape {
  constructor(readonly samples: Sample[]) {}

  series(name: string): Sample[] {
    return this.samples.filter((s) => s.name === name);
  }

  /** The sample whose labels are exactly these; 0 when the series does not exist yet (counters start at 0). */
  value(name: string, labels: Record<string, string>): number {
    const want = Object.entries(labels);
    const found = this.series(name).find(
      (s) => Object.keys(s.labels).length === want.length && want.every(([k, v]) => s.labels[k] === v),
    );
    return found?.value ?? 0;
  }
}

async function scrape(app: FastifyInstance): Promise<Scrape> {
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`);
  return new Scrape(parsePrometheus(res.body));
}

/** Image models of one fixed input size: tuned at warm-up on the CPU provider by default. */
const TUNED = ['mobilenetv2', 'yolox-nano', 'ultraface'];

/**
 * Batch-size tuning as /v1/models reports it. Every shared model runs on the CPU provider under the default
 * `tune: 'cpu'`: the fixed-size image models are tuned, OCR's dynamic-size stages are not (the tensor models and
 * deeplabv3, of dynamic size, are checked for consistency whichever they are). What the timings are depends on the
 * machine, so only their consistency with the limit chosen is checked, never a value.
 */
function checkTuning(t: Test, at: string, s: StageDescription, expect: 'tuned' | 'untuned' | 'either'): void {
  const b = s.batching;
  t.equal(b.tune, 'cpu', `${at}: tune defaults to cpu`);
  t.ok(b.batchLimit >= 1 && b.batchLimit <= b.maxBatchSize, `${at}: batch limit ${b.batchLimit} within 1..${b.maxBatchSize}`);
  const tuning = b.tuning;
  if (expect === 'tuned') t.ok(tuning !== undefined, `${at}: a fixed-size stage on the CPU provider is tuned`);
  if (expect === 'untuned') t.equal(tuning, undefined, `${at}: a dynamic-size stage is not tuned`);
  if (tuning === undefined) {
    t.equal(b.batchLimit, b.maxBatchSize, `${at}: untuned, the limit is maxBatchSize`);
    return;
  }
  t.same(tuning.perImageMs.map((x) => x.size), candidateSizes(b.maxBatchSize), `${at}: sizes 1, 2, 4, ... max tried`);
  t.ok(tuning.perImageMs.every((x) => x.ms > 0), `${at}: every size timed`);
  const best = Math.min(...tuning.perImageMs.map((x) => x.ms));
  const within = (ms: number): boolean => ms <= best * (1 + tuning.tolerance) + 0.002; // ms are rounded to 1 us
  const chosen = tuning.perImageMs.find((x) => x.size === b.batchLimit);
  t.ok(chosen !== undefined && within(chosen.ms), `${at}: the limit ${b.batchLimit} is within the tolerance of the cheapest`);
  const smaller = tuning.perImageMs.filter((x) => x.size < b.batchLimit);
  t.ok(smaller.every((x) => x.ms >= best * (1 + tuning.tolerance) - 0.002), `${at}: no smaller size was as cheap`);
}

t.test('a loaded app', sharedTestOptions(...SHARED), async (t) => {
  const { app, logs } = await buildTestApp(t, { config: { logLevel: 'debug' } });

  t.test('/healthz is 200 ok', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    t.equal(res.statusCode, 200);
    t.same(res.json(), { status: 'ok' });
  });

  t.test('/readyz is 200 with every model READY on the cpu provider', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    t.equal(res.statusCode, 200);
    const body = res.json<Readiness>();
    t.equal(body.status, 'ready');
    t.same(body.models.map((m) => m.name).sort(), [...MODELS].sort());
    for (const m of body.models) {
      t.equal(m.state, 'READY', `${m.name} READY`);
      t.equal(m.provider, 'cpu', `${m.name} on cpu`);
    }
  });

  t.test('GET /v1/models describes the 8 models', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/v1/models' });
    t.equal(res.statusCode, 200);
    const models = res.json<{ models: ModelDescription[] }>().models;
    t.same(models.map((m) => m.name).sort(), [...MODELS].sort());
    for (const m of models) {
      t.equal(m.state, 'READY', `${m.name}: READY`);
      t.equal(m.provider, 'cpu', `${m.name}: provider cpu`);
      t.ok(typeof m.version === 'string' && m.version.length > 0, `${m.name}: a version`);
      t.equal(m.stages.length, m.name === 'ocr' ? 2 : 1, `${m.name}: stages`);
      for (const s of m.stages) {
        const at = `${m.name}/${s.stage}`;
        t.equal(s.provider, 'cpu', `${at}: provider`);
        t.ok((s.nodeCounts['CPUExecutionProvider'] ?? 0) > 0, `${at}: nodes on CPUExecutionProvider`);
        t.ok(s.instances >= 1, `${at}: instances`);
        t.ok(s.inputs.length >= 1 && s.outputs.length >= 1, `${at}: inputs and outputs`);
        for (const io of [...s.inputs, ...s.outputs]) {
          t.equal(io.shape[0], -1, `${at}: ${io.name} has a dynamic batch dim`);
          t.equal(io.type, 'float32', `${at}: ${io.name} is float32`);
        }
        t.ok(s.batching.maxBatchSize >= 1 && s.batching.maxQueueSize >= 1 && s.batching.timeoutMs > 0, `${at}: batching`);
        t.type(s.batching.maxQueueDelayMs, 'number');
        checkTuning(t, at, s, TUNED.includes(m.name) ? 'tuned' : m.name === 'ocr' ? 'untuned' : 'either');
      }
    }
    t.same(
      models.find((m) => m.name === 'ocr')?.stages.map((s) => s.stage),
      ['detector', 'recognizer'],
    );

    const one = await app.inject({ method: 'GET', url: '/v1/models/yolox-nano' });
    t.equal(one.statusCode, 200);
    t.equal(one.json<ModelDescription>().task, 'object-detection');

    const nope = await app.inject({ method: 'GET', url: '/v1/models/nope' });
    t.equal(nope.statusCode, 404);
    t.same(Object.keys(nope.json<Record<string, unknown>>()).sort(), ['code', 'message']);
    t.equal(nope.json<{ code: string }>().code, 'MODEL_NOT_FOUND');
  });

  t.test('/openapi.json is an OpenAPI 3 document with the predict path', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/openapi.json' });
    t.equal(res.statusCode, 200);
    const doc = res.json<{
      openapi?: string;
      info?: { title?: string; version?: string };
      paths?: Record<string, Record<string, { responses?: Record<string, unknown>; parameters?: { name: string; in: string }[] }>>;
    }>();
    t.match(doc.openapi ?? '', /^3\.\d+\.\d+$/, 'openapi: 3.x.y');
    t.ok(doc.info?.title !== undefined && doc.info.version !== undefined, 'info has a title and a version');
    const predictOp = doc.paths?.['/v1/models/{name}/predict']?.['post'];
    t.ok(predictOp, 'POST /v1/models/{name}/predict is documented');
    t.ok(predictOp?.responses?.['200'] !== undefined && predictOp.responses['415'] !== undefined, 'with its 200 and error answers');
    const params = predictOp?.parameters ?? [];
    t.ok(params.some((p) => p.name === 'name' && p.in === 'path'), 'the model name path parameter');
    t.ok(params.some((p) => p.name === 'top_k' && p.in === 'query'), 'the query parameters');
    t.ok(doc.paths?.['/v1/models']?.['get'], 'GET /v1/models is documented');
    t.notOk(doc.paths?.['/openapi.json'], 'the document hides itself');
  });

  t.test('metrics count predictions, batches and stage timings', async (t) => {
    const before = await scrape(app);
    const N = 5;
    const answers = await Promise.all(Array.from({ length: N }, () => predict(app, 'mobilenetv2', catPng())));
    t.same(
      answers.map((r) => r.statusCode),
      Array.from({ length: N }, () => 200),
    );
    const bogus = await predict(app, 'bogus-model-name', catPng());
    t.equal(bogus.statusCode, 404);
    const after = await scrape(app);

    const delta = (name: string, labels: Record<string, string>) => after.value(name, labels) - before.value(name, labels);
    const model = { model: 'mobilenetv2' };
    const stage = { model: 'mobilenetv2', stage: 'main' };

    t.equal(delta('ocular_requests_total', { model: 'mobilenetv2', status: '200', error_code: '' }), N, 'requests_total +5 (200)');
    t.equal(delta('ocular_requests_total', { model: '_unknown', status: '404', error_code: 'MODEL_NOT_FOUND' }), 1, '_unknown +1 (404)');
    t.same(
      after.samples.filter((s) => Object.values(s.labels).includes('bogus-model-name')),
      [],
      'no series carries the bogus model name',
    );
    t.equal(delta('ocular_request_duration_seconds_count', model), N, 'request_duration count +5');
    t.ok(delta('ocular_request_duration_seconds_sum', model) > 0, 'request_duration sum grew');
    t.equal(delta('ocular_queue_duration_seconds_count', model), N, 'queue_duration count +5');
    t.equal(delta('ocular_preprocess_duration_seconds_count', model), N, 'preprocess_duration count +5');
    const batches = delta('ocular_batch_size_count', stage);
    t.ok(batches >= 1 && batches <= N, `batch_size count grew by 1..5 (${batches})`);
    t.equal(delta('ocular_batch_size_sum', stage), N, 'batch sizes sum to the 5 requests');
    t.equal(delta('ocular_inference_duration_seconds_count', stage), batches, 'one inference observation per batch');
    t.equal(delta('ocular_requests_total', { model: 'yolox-nano', status: '200', error_code: '' }), 0, 'other models untouched');

    const info = after.series('ocular_model_info');
    t.same(info.map((s) => s.labels['model']).sort(), [...MODELS].sort(), 'model_info for the 4 models');
    t.ok(info.every((s) => s.labels['provider'] === 'cpu' && s.value === 1), 'each on cpu, value 1');
    t.ok(after.series('nodejs_eventloop_lag_seconds').length > 0, 'nodejs_eventloop_lag_seconds present');
    const depth = after.series('ocular_queue_depth');
    t.same(depth.map((s) => s.labels['model']).sort(), [...MODELS].sort(), 'queue_depth per model');
    t.ok(depth.every((s) => s.value === 0), 'and nothing queued now');
  });

  t.test('a held model worker blocks neither liveness nor another model', async (t) => {
    const handle = app.ocular.models.list().find((m) => m.name === 'mobilenetv2');
    const stage = handle?.stages[0];
    if (stage === undefined) throw new Error('mobilenetv2 has no stage');
    const held = testHooksOf(stage.pool).hold();
    let released = false;
    t.teardown(() => {
      if (!released) held.release();
    });
    await held.entered;

    let mobilenetSettled = false;
    let mobilenetSettledBeforeRelease = false;
    const mobilenet = predict(app, 'mobilenetv2', catPng()).then((res) => {
      mobilenetSettled = true;
      mobilenetSettledBeforeRelease = !released;
      return res;
    });

    const health = await app.inject({ method: 'GET', url: '/healthz' });
    t.equal(health.statusCode, 200, '/healthz answers while the worker is held');
    const yolox = await predict(app, 'yolox-nano', soccerJpg());
    t.equal(yolox.statusCode, 200, 'yolox-nano answers while the mobilenet worker is held');
    t.notOk(mobilenetSettled, 'the mobilenet request is still pending after the others finished');

    released = true;
    held.release();
    await held.done;
    const res = await mobilenet;
    t.notOk(mobilenetSettledBeforeRelease, 'it completed only after the release');
    t.equal(res.statusCode, 200, 'and then answers 200');
    t.equal(res.json<{ predictions: { label: string }[] }>().predictions[0]?.label, 'Egyptian cat');
  });

  t.test("a request's log lines carry its id; credentials never reach the log", async (t) => {
    const secret = 'Bearer secret-token-5f2a9c';
    const from = logs.lines.length;
    const res = await predict(app, 'mobilenetv2', catPng(), { 'x-request-id': 'log-trace-1', authorization: secret, 'x-api-key': 'key-77f1e3' });
    t.equal(res.statusCode, 200);
    const refused = await app.inject({
      method: 'POST',
      url: '/v1/models/mobilenetv2/predict',
      headers: { 'content-type': 'text/plain', 'x-request-id': 'log-trace-2', authorization: secret },
      payload: 'not an image',
    });
    t.equal(refused.statusCode, 415);
    const lines = logs.lines.slice(from);

    const first = lines.filter((l) => l['reqId'] === 'log-trace-1');
    t.ok(first.some((l) => l['msg'] === 'incoming request'), 'the incoming line carries the id');
    t.ok(first.some((l) => l['msg'] === 'request completed'), 'the completed line carries the id');
    const second = lines.filter((l) => l['reqId'] === 'log-trace-2');
    t.ok(second.some((l) => l['msg'] === 'request refused'), 'a refused request is logged with its id');

    t.ok(lines.length > 0 && logs.lines.length > 0, 'lines were captured');
    const leaks = logs.lines.map((l) => JSON.stringify(l)).filter((s) => s.includes('secret-token-5f2a9c') || s.includes('key-77f1e3'));
    t.same(leaks, [], 'no captured line holds the authorization header or the API key');
  });
});

t.test('an app whose models are still loading', sharedTestOptions(MOBILENET, 'images/cat_chelsea.png'), async (t) => {
  const { app } = await buildTestApp(t, { load: false });

  const health = await app.inject({ method: 'GET', url: '/healthz' });
  t.equal(health.statusCode, 200, 'liveness answers 200');

  const ready = await app.inject({ method: 'GET', url: '/readyz' });
  t.equal(ready.statusCode, 503, 'readiness answers 503');
  t.equal(ready.headers['retry-after'], '1');
  const body = ready.json<Readiness>();
  t.equal(body.status, 'not_ready');
  t.ok(body.models.length === MODELS.length && body.models.every((m) => m.state === 'LOADING'), 'every model LOADING');

  const res = await predict(app, 'mobilenetv2', catPng());
  t.equal(res.statusCode, 503);
  t.equal(res.json<{ code: string }>().code, 'MODEL_NOT_READY');
  t.equal(res.headers['retry-after'], '1', 'with Retry-After');
});

t.test('a draining app', sharedTestOptions(MOBILENET, 'images/cat_chelsea.png'), async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: mobilenetOnlyManifest(t.testdir()) });
  t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200, 'ready before');
  t.equal((await predict(app, 'mobilenetv2', catPng())).statusCode, 200, 'predicts before');

  app.ocular.models.startDraining();

  const ready = await app.inject({ method: 'GET', url: '/readyz' });
  t.equal(ready.statusCode, 503, 'readiness 503');
  t.equal(ready.json<Readiness>().status, 'draining');
  t.equal((await app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200, 'liveness still 200');
  const res = await predict(app, 'mobilenetv2', catPng());
  t.equal(res.statusCode, 503);
  t.same(Object.keys(res.json<Record<string, unknown>>()).sort(), ['code', 'message']);
  t.equal(res.json<{ code: string }>().code, 'DRAINING');
  t.equal(res.headers['retry-after'], '1', 'with Retry-After');
});

/** The batching of a one-stage model, as GET /v1/models/{name} reports it. */
async function batchingOf(app: FastifyInstance, name: string): Promise<StageDescription['batching']> {
  const res = await app.inject({ method: 'GET', url: `/v1/models/${name}` });
  const stage = res.json<ModelDescription>().stages[0];
  if (stage === undefined) throw new Error(`${name}: no stage`);
  return stage.batching;
}

t.test('padBatches: "gpu" pads nothing on the CPU provider; "always" pads to the limit and answers the same', sharedTestOptions(MOBILENET), async (t) => {
  const entry = sharedModel('mobilenetv2');
  const plain = { ...entry, name: 'mobilenet-plain', batching: { maxBatchSize: 4, tune: 'off' } };
  const padded = { ...entry, name: 'mobilenet-padded', batching: { maxBatchSize: 4, tune: 'off', padBatches: 'always' } };
  const { app, logs } = await buildTestApp(t, { manifestPath: writeManifest([plain, padded]) });
  const p = await batchingOf(app, 'mobilenet-plain');
  t.equal(p.padBatches, 'gpu', 'the default');
  t.equal(p.padded, false, 'the CPU provider: no padding');
  const q = await batchingOf(app, 'mobilenet-padded');
  t.equal(q.padBatches, 'always');
  t.equal(q.padded, true);
  t.equal(q.batchLimit, 4);
  const ready = logs.find('model stage ready');
  t.equal(ready.find((l) => l['model'] === 'mobilenet-padded')?.['padded'], true, 'the log says so too');
  // One request at a time: the padded model runs each as a batch of 4 and answers with that one request's result.
  for (const photo of [catPng(), soccerJpg()]) {
    const a = await predict(app, 'mobilenet-plain', photo);
    const b = await predict(app, 'mobilenet-padded', photo);
    t.equal(a.statusCode, 200);
    t.equal(b.statusCode, 200);
    const top = (r: typeof a) => r.json<{ predictions: { label: string; score: number }[] }>().predictions;
    t.same(top(b).map((x) => x.label), top(a).map((x) => x.label), 'same labels');
    const diff = Math.max(...top(a).map((x, i) => Math.abs(x.score - (top(b)[i]?.score ?? NaN))));
    t.ok(diff <= 1e-4, `same scores (max difference ${diff})`);
  }
});

t.test('tune "off" keeps batches up to maxBatchSize; the logs say what each stage got', sharedTestOptions(MOBILENET), async (t) => {
  const entry = sharedModel('mobilenetv2');
  const off = { ...entry, name: 'mobilenet-untuned', batching: { maxBatchSize: 4, tune: 'off' } };
  const tuned = { ...entry, name: 'mobilenet-tuned', batching: { maxBatchSize: 4 } };
  const { app, logs } = await buildTestApp(t, { manifestPath: writeManifest([off, tuned]) });
  const untunedBatching = await batchingOf(app, 'mobilenet-untuned');
  t.equal(untunedBatching.tune, 'off');
  t.equal(untunedBatching.batchLimit, 4);
  t.equal(untunedBatching.tuning, undefined);
  const tunedBatching = await batchingOf(app, 'mobilenet-tuned');
  t.same(
    tunedBatching.tuning?.perImageMs.map((x) => x.size),
    [1, 2, 4],
  );
  const ready = logs.find('model stage ready');
  const limitOf = (model: string): unknown => ready.find((l) => l['model'] === model)?.['batchLimit'];
  t.equal(limitOf('mobilenet-untuned'), 4);
  t.equal(limitOf('mobilenet-tuned'), tunedBatching.batchLimit);
  t.ok(Array.isArray(ready.find((l) => l['model'] === 'mobilenet-tuned')?.['batchTuning']), 'the tuning timings are logged');
});
