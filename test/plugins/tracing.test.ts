import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { buildApp } from '../../src/app.js';
import type { Config, TracingConfig } from '../../src/config/config.js';
import { loadManifest } from '../../src/config/manifest.js';
import { createOtlpExporter, type ExporterFactory } from '../../src/plugins/tracing.js';
import { LogCapture, testConfig } from '../helpers/app.js';
import { writeSubsetManifest } from '../helpers/manifest-subset.js';
import { startOtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { writeTinyManifest } from '../v2/helpers.js';
import { inferenceClient, refusal } from '../grpc/client.js';
import * as grpcJs from '@grpc/grpc-js';

// Builds apps with real ONNX sessions (tiny models; mobilenetv2 for /v1) and a listener each: about 25 s here, the
// limit leaving room for a machine shared by several test runs.
t.setTimeout(120_000);

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CALLER_SPAN = '00f067aa0ba902b7';
const SERVER = 2;
const INTERNAL = 1;
const ERROR = 2;

interface Built {
  app: FastifyInstance;
  logs: LogCapture;
  base: string;
  /** How many exporters the app made. */
  exporters: () => number;
}

async function build(t: Test, manifestPath: string, config: Partial<Config>): Promise<Built> {
  const cfg = testConfig({ manifest: manifestPath, device: 'cpu', manifestWatchMs: 0, ...config });
  const logs = new LogCapture();
  let made = 0;
  const createTraceExporter: ExporterFactory = async (c: TracingConfig) => {
    made++;
    return createOtlpExporter(c);
  };
  const app = await buildApp({ config: cfg, manifest: await loadManifest(manifestPath), logger: pino({ level: 'info' }, logs), createTraceExporter });
  t.teardown(() => app.close());
  await app.ocular.models.loadAll();
  const address = await app.listen({ port: 0, host: '127.0.0.1' });
  return { app, logs, base: address, exporters: () => made };
}

const addBody = (a: number) =>
  JSON.stringify({
    inputs: [
      { name: 'A', datatype: 'FP32', shape: [1, 4], data: [a, a, a, a] },
      { name: 'B', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, 4] },
    ],
  });

const traceparent = (traceId: string, spanId = CALLER_SPAN) => `00-${traceId}-${spanId}-01`;

function infer(base: string, model: string, body: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${base}/v2/models/${model}/infer`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, ...(signal !== undefined && { signal }) });
}

async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const childrenOf = (spans: ReceivedSpan[], parent: ReceivedSpan) => spans.filter((s) => s.parentSpanId === parent.spanId && s.traceId === parent.traceId);

/** The stage spans of a server span, by name; each must be a child of it, within its time. */
function stagesOf(t: Test, spans: ReceivedSpan[], server: ReceivedSpan): Map<string, ReceivedSpan> {
  const children = childrenOf(spans, server);
  const byName = new Map(children.map((c) => [c.name, c]));
  t.same([...byName.keys()].sort(), ['inference', 'postprocess', 'preprocess', 'queue'], 'preprocess, queue, inference, postprocess under the server span');
  for (const c of children) {
    t.equal(c.kind, INTERNAL, `${c.name} is internal`);
    t.ok(c.startNs >= server.startNs && c.endNs <= server.endNs, `${c.name} lies within the server span`);
    t.ok(c.endNs >= c.startNs, `${c.name} ends after it starts`);
  }
  const queue = byName.get('queue');
  const inference = byName.get('inference');
  if (queue !== undefined && inference !== undefined) t.equal(inference.startNs, queue.endNs, 'inference starts when the queue wait ends');
  return byName;
}

/** No attribute of any span holds a tensor value, the body, or another request's identifiers. */
function checkNoRequestData(t: Test, spans: ReceivedSpan[], forbidden: string[]): void {
  const text = JSON.stringify(spans.map((s) => s.attributes));
  for (const f of forbidden) t.notOk(text.includes(f), `no attribute holds ${f}`);
}

t.test('/v2 infer: a server span continuing the caller trace, its stages, and the batch it ran in', async (t) => {
  const receiver = await startOtlpReceiver();
  t.teardown(() => receiver.close());
  const dir = t.testdir();
  const manifestPath = writeTinyManifest(dir, (models) => {
    const add = models.find((m) => m['name'] === 'add') as Record<string, unknown>;
    // Two requests, one batch: a batch of 2 runs as soon as both are queued; the delay only bounds a lone one.
    models.push({ ...add, name: 'pair', version: '7', batching: { maxBatchSize: 2, maxQueueDelayMs: 30_000, maxQueueSize: 8 } });
  });
  const { app, logs, base, exporters } = await build(t, manifestPath, { otlpTracesEndpoint: receiver.url });
  t.equal(exporters(), 1, 'one exporter');
  t.equal(app.tracing.enabled, true);

  // One request, with tracestate.
  const res = await infer(base, 'add', addBody(1.5), { traceparent: traceparent(TRACE_ID), tracestate: 'vendor=opaque1' });
  t.equal(res.status, 200);
  const traceresponse = res.headers.get('traceresponse') ?? '';
  t.match(traceresponse, new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-01$`), 'traceresponse: the caller trace, this server span, sampled');
  const requestId = res.headers.get('x-request-id') ?? '';

  // A batched pair, from two traces.
  const pairIds = ['aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2'];
  const pair = await Promise.all(pairIds.map((id, i) => infer(base, 'pair', addBody(10 + i), { traceparent: traceparent(id), 'x-request-id': `pair-request-${i}` })));
  t.same(pair.map((r) => r.status), [200, 200]);

  // Refused: no such model (404), without a traceparent: a new trace.
  const refused = await infer(base, 'nope', addBody(1));
  t.equal(refused.status, 404);
  const refusedTrace = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(refused.headers.get('traceresponse') ?? '');
  t.ok(refusedTrace, 'a refused request answers traceresponse too');

  // Dropped: the client leaves while its request waits in the queue (alone, it waits for a pair).
  const dropId = 'dddddddddddddddddddddddddddddd04';
  const leave = new AbortController();
  const dropped = infer(base, 'pair', addBody(3), { traceparent: traceparent(dropId) }, leave.signal).catch(() => undefined);
  await until('the request to queue', () => (app.ocular.models.get('pair')?.stages[0]?.depth ?? 0) === 1);
  leave.abort();
  await dropped;
  await until('the drop to be counted', async () =>
    (await (await fetch(`${base}/metrics`)).text()).includes('ocular_requests_dropped_total{model="pair",reason="client_closed"} 1'),
  );

  // A probe is not traced.
  const probe = await fetch(`${base}/healthz`);
  t.equal(probe.headers.get('traceresponse'), null, 'probes are not traced');

  await app.close();
  const spans = receiver.spans;

  // The single request.
  const server = spans.find((s) => s.kind === SERVER && s.traceId === TRACE_ID);
  if (server === undefined) return t.fail('no server span for the traced request');
  t.equal(server.name, 'POST /v2/models/:name/infer');
  t.equal(server.parentSpanId, CALLER_SPAN, 'its parent is the caller span');
  t.equal(server.traceState, 'vendor=opaque1', 'tracestate carried');
  t.equal(traceresponse.split('-')[2], server.spanId, 'traceresponse names the server span');
  t.equal(server.attributes['http.request.method'], 'POST');
  t.equal(server.attributes['http.route'], '/v2/models/:name/infer');
  t.equal(server.attributes['http.response.status_code'], 200);
  t.equal(server.attributes['ocular.model'], 'add');
  t.equal(server.attributes['ocular.model.version'], '1');
  t.equal(server.attributes['ocular.transport'], 'http');
  t.equal(server.attributes['ocular.request_id'], requestId, 'its own request id, for the link from logs and dashboards');
  t.equal(server.statusCode, 0, 'status unset on success');
  t.equal(server.resource['service.name'], 'ocular');
  const stages = stagesOf(t, spans, server);
  const inference = stages.get('inference');
  t.equal(inference?.links.length, 1, 'the inference span links to its batch');
  const batch = spans.find((s) => s.spanId === inference?.links[0]?.spanId);
  if (batch === undefined) return t.fail('the linked batch span was not exported');
  t.equal(batch.name, 'batch');
  t.equal(batch.parentSpanId, '', 'a batch span is a root: it may serve several traces');
  t.same(
    { size: batch.attributes['ocular.batch.size'], model: batch.attributes['ocular.model'], version: batch.attributes['ocular.model.version'], provider: batch.attributes['ocular.provider'], stage: batch.attributes['ocular.stage'], kind: batch.attributes['ocular.batch.kind'] },
    { size: 1, model: 'add', version: '1', provider: 'cpu', stage: 'main', kind: 'tensors' },
  );

  // The pair: one batch of 2, linked from both requests' inference spans.
  const pairServers = pairIds.map((id) => spans.find((s) => s.kind === SERVER && s.traceId === id));
  const pairInference = pairServers.map((s) => (s === undefined ? undefined : stagesOf(t, spans, s).get('inference')));
  const linked = pairInference.map((s) => s?.links[0]?.spanId);
  t.equal(linked.length, 2);
  t.ok(linked[0] !== undefined && linked[0] === linked[1], 'both inference spans link to one batch span');
  const pairBatch = spans.find((s) => s.spanId === linked[0]);
  t.equal(pairBatch?.attributes['ocular.batch.size'], 2, 'the batch served both');
  t.equal(pairBatch?.attributes['ocular.model.version'], '7');
  t.equal(pairInference[0]?.attributes['ocular.batch.size'], 2);
  t.equal(spans.filter((s) => s.name === 'batch' && s.attributes['ocular.model'] === 'pair').length, 1, 'one batch span for the pair');

  // The refusal says why.
  const refusedSpan = spans.find((s) => s.kind === SERVER && s.traceId === refusedTrace?.[1]);
  t.equal(refusedSpan?.parentSpanId, '', 'without traceparent: a new trace');
  t.equal(refusedSpan?.statusCode, ERROR);
  t.equal(refusedSpan?.statusMessage, 'MODEL_NOT_FOUND');
  t.equal(refusedSpan?.attributes['ocular.error.code'], 'MODEL_NOT_FOUND');
  t.equal(refusedSpan?.attributes['http.response.status_code'], 404);
  t.equal(refusedSpan === undefined ? -1 : childrenOf(spans, refusedSpan).length, 0, 'no stages for a refused request');

  // The drop says why, and ran no batch.
  const dropSpan = spans.find((s) => s.kind === SERVER && s.traceId === dropId);
  t.equal(dropSpan?.statusCode, ERROR);
  t.equal(dropSpan?.attributes['ocular.error.code'], 'CLIENT_CLOSED_REQUEST');
  t.equal(dropSpan?.attributes['ocular.drop.reason'], 'client_closed');
  t.equal(dropSpan?.attributes['http.response.status_code'], 499);
  t.same(dropSpan === undefined ? [] : childrenOf(spans, dropSpan).map((s) => s.name), ['preprocess'], 'parsed, never run');

  // Nothing of a request in any attribute: tensor values, another request's id in the pair's spans.
  checkNoRequestData(t, spans, ['1.5', '"data"']);
  const firstPairSpans = spans.filter((s) => s.traceId === pairIds[0]);
  t.notOk(JSON.stringify(firstPairSpans.map((s) => [s.name, s.attributes, s.statusMessage])).includes('pair-request-1'), "a request's spans never name another request");

  // Every log line of the traced request carries its trace id.
  const lines = logs.lines.filter((l) => (l['reqId'] ?? (l['req'] as { id?: string } | undefined)?.id) === requestId);
  t.ok(lines.length >= 2, `${lines.length} log lines of the request`);
  for (const l of lines) t.equal(l['trace_id'], TRACE_ID, `"${String(l['msg'])}" carries the trace id`);
  t.equal(lines.find((l) => l['msg'] === 'incoming request')?.['span_id'], server.spanId, 'and the server span id');
});

t.test('/v1 predict: the same spans over an image', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', 'images/cat_chelsea.png'), async (t) => {
  const receiver = await startOtlpReceiver();
  t.teardown(() => receiver.close());
  const manifestPath = writeSubsetManifest(t.testdir(), ['mobilenetv2']);
  const { app, base } = await build(t, manifestPath, { otlpTracesEndpoint: receiver.url });
  const cat = readFileSync(imagePath('cat_chelsea.png'));
  const id = 'cccccccccccccccccccccccccccccc03';
  const res = await fetch(`${base}/v1/models/mobilenetv2/predict`, { method: 'POST', headers: { 'content-type': 'image/png', traceparent: traceparent(id) }, body: cat });
  t.equal(res.status, 200);
  await app.close();
  const server = receiver.spans.find((s) => s.kind === SERVER && s.traceId === id);
  if (server === undefined) return t.fail('no server span');
  t.equal(server.name, 'POST /v1/models/:name/predict');
  t.equal(server.parentSpanId, CALLER_SPAN);
  t.equal(server.attributes['ocular.model'], 'mobilenetv2');
  const inference = stagesOf(t, receiver.spans, server).get('inference');
  const batch = receiver.spans.find((s) => s.spanId === inference?.links[0]?.spanId);
  t.equal(batch?.attributes['ocular.batch.kind'], 'images');
  t.equal(batch?.attributes['ocular.provider'], 'cpu');
  t.equal(batch?.attributes['ocular.batch.size'], 1);
  // No image bytes: the PNG signature's bytes never appear as an attribute.
  checkNoRequestData(t, receiver.spans, [cat.subarray(0, 8).toString('latin1'), cat.subarray(0, 8).toString('base64')]);
});

t.test('tracing off: no exporter made, nothing exported, no traceresponse', async (t) => {
  const receiver = await startOtlpReceiver();
  t.teardown(() => receiver.close());
  const manifestPath = writeTinyManifest(t.testdir());
  // An endpoint is configured, but OCULAR_TRACING=false wins.
  const { app, base, exporters, logs } = await build(t, manifestPath, { tracing: false, otlpTracesEndpoint: receiver.url });
  const res = await infer(base, 'add', addBody(1), { traceparent: traceparent(TRACE_ID) });
  t.equal(res.status, 200);
  t.equal(res.headers.get('traceresponse'), null);
  t.equal(app.tracing.enabled, false);
  t.equal(app.tracing.batches, undefined, 'no batch tracer');
  await app.close();
  t.equal(exporters(), 0, 'no exporter was created');
  t.equal(receiver.requests, 0, 'nothing was exported');
  t.notOk(logs.lines.some((l) => 'trace_id' in l), 'no trace ids in the logs');
});

t.test('the exporter speaks the configured protocol: OTLP http/protobuf by default, gRPC when asked', async (t) => {
  const { OTLPTraceExporter: ProtoExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  const { OTLPTraceExporter: GrpcExporter } = await import('@opentelemetry/exporter-trace-otlp-grpc');
  const http = await createOtlpExporter({ protocol: 'http/protobuf', url: 'http://127.0.0.1:9/v1/traces' });
  const grpc = await createOtlpExporter({ protocol: 'grpc', url: 'http://127.0.0.1:9' });
  t.type(http, ProtoExporter);
  t.type(grpc, GrpcExporter);
  await Promise.all([http.shutdown(), grpc.shutdown()]);
});

t.test('gRPC ModelInfer: a server span from the metadata traceparent, its stages and batch, traceresponse in the initial metadata', async (t) => {
  const receiver = await startOtlpReceiver();
  t.teardown(() => receiver.close());
  const { app, logs } = await build(t, writeTinyManifest(t.testdir()), { otlpTracesEndpoint: receiver.url });
  const port = await app.grpc.listen('127.0.0.1', 0);
  const client = inferenceClient(port);
  t.teardown(() => client.close());
  const grpcTrace = 'cccccccccccccccccccccccccccccc03';
  const metadata = new grpcJs.Metadata();
  metadata.set('traceparent', traceparent(grpcTrace));
  const { call, done } = client.start('ModelInfer', {
    model_name: 'add',
    inputs: [
      { name: 'A', datatype: 'FP32', shape: [1, 4], contents: { fp32_contents: [2, 2, 2, 2] } },
      { name: 'B', datatype: 'FP32', shape: [1, 4], contents: { fp32_contents: [1, 2, 3, 4] } },
    ],
  }, { metadata });
  const initial = new Promise<grpcJs.Metadata>((resolve) => call.on('metadata', resolve));
  await done;
  const traceresponse = String((await initial).get('traceresponse')[0] ?? '');
  t.match(traceresponse, new RegExp(`^00-${grpcTrace}-[0-9a-f]{16}-01$`), 'traceresponse in the initial metadata');
  const missing = await refusal(client.call('ModelInfer', { model_name: 'nope', inputs: [] }));
  t.equal(missing.code, grpcJs.status.NOT_FOUND);
  await app.close();

  const server = receiver.spans.find((s) => s.kind === SERVER && s.traceId === grpcTrace);
  if (server === undefined) return t.fail('no server span for the gRPC call');
  t.equal(server.name, 'inference.GRPCInferenceService/ModelInfer');
  t.equal(server.parentSpanId, CALLER_SPAN, 'its parent is the caller span, from the metadata');
  t.equal(traceresponse.split('-')[2], server.spanId, 'traceresponse names the server span');
  t.equal(server.attributes['ocular.transport'], 'grpc');
  t.equal(server.attributes['rpc.grpc.status_code'], 0, 'OK');
  t.equal(server.attributes['ocular.model'], 'add');
  const stages = stagesOf(t, receiver.spans, server);
  t.equal(stages.get('inference')?.links.length, 1, 'the inference span links to its batch');
  const refused = receiver.spans.find((s) => s.kind === SERVER && s.name === 'inference.GRPCInferenceService/ModelInfer' && s.traceId !== grpcTrace);
  t.equal(refused?.statusCode, ERROR);
  t.equal(refused?.attributes['ocular.error.code'], 'MODEL_NOT_FOUND');
  t.equal(refused?.attributes['rpc.grpc.status_code'], grpcJs.status.NOT_FOUND);
  t.ok(logs.lines.some((l) => l['trace_id'] === grpcTrace && l['transport'] === 'grpc'), "the call's log lines carry its trace id");
});
