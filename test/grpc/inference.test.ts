/**
 * The Open Inference Protocol over gRPC, through a client generated from the same inference.proto by @grpc/grpc-js,
 * against a real app (the shared mobilenet, CPU) listening on an ephemeral gRPC port (`app.grpc.listen(host, 0)`):
 * every RPC, the reference tensors within 1e-4 with typed and raw contents, BYTES photos answering as /v1 does,
 * the catalog's errors as gRPC codes, a deadline that expires in the queue, cancellation dropping queued work,
 * concurrent calls, health while draining.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { imagePath, maxAbsDiff, modelPath, readTensorProto, sharedTestOptions } from '../helpers/shared.js';
import { bytesElements, float32Of, inferenceClient, refusal, type Message } from './client.js';

t.setTimeout(120_000);

const ATOL = 1e-4;
const DIR = 'mobilenetv2-12-int8';
const PHOTOS = ['cat_chelsea.png', 'flower_dahlia.jpg', 'robin.jpg'];
const LIMIT = 16 * 1024 * 1024;

interface InferAnswer {
  model_name: string;
  model_version: string;
  id: string;
  outputs: { name: string; datatype: string; shape: string[]; contents: { fp32_contents: number[]; bytes_contents: Buffer[] } | null }[];
  raw_output_contents: Buffer[];
}

const files = [`models/${DIR}/model.onnx`, `models/${DIR}/test_data_set_0/input_0.pb`, `models/${DIR}/test_data_set_1/output_0.pb`, ...PHOTOS.map((p) => `images/${p}`)];

t.test('GRPCInferenceService over a generated client', sharedTestOptions(...files), async (t) => {
  const mobilenet = sharedModel('mobilenetv2');
  // `slow` waits up to 30 s for a batch to fill: its requests stay queued, for the deadline and cancel tests.
  const slow = { ...mobilenet, name: 'slow', batching: { maxBatchSize: 8, maxQueueDelayMs: 30_000, maxQueueSize: 16 } };
  const { app } = await buildTestApp(t, {
    manifestPath: writeManifest([mobilenet, slow]),
    config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: LIMIT, maxInflightBodyBytes: 4 * LIMIT },
  });
  const port = await app.grpc.listen('127.0.0.1', 0);
  const client = inferenceClient(port);
  t.teardown(() => client.close());
  const meta = await client.call<{ name: string; versions: string[]; platform: string; inputs: { name: string; datatype: string; shape: string[] }[]; outputs: { name: string }[] }>(
    'ModelMetadata',
    { name: 'mobilenetv2' },
  );
  const inputName = meta.inputs[0]?.name as string;

  t.test('server and model RPCs answer as their REST routes', async (t) => {
    t.same(await client.call('ServerLive', {}), { live: true });
    t.same(await client.call('ServerReady', {}), { ready: true });
    t.same(await client.call('ModelReady', { name: 'mobilenetv2', version: '' }), { ready: true });
    const server = await client.call<{ name: string; version: string; extensions: string[] }>('ServerMetadata', {});
    const rest = (await app.inject({ method: 'GET', url: '/v2' })).json<{ name: string; version: string; extensions: string[] }>();
    t.same(server, rest, 'ServerMetadata is GET /v2');
    const restMeta = (await app.inject({ method: 'GET', url: '/v2/models/mobilenetv2' })).json<{ inputs: { name: string; datatype: string; shape: number[] }[] }>();
    t.equal(meta.name, 'mobilenetv2');
    t.same(meta.versions, [mobilenet['version']]);
    t.same(
      meta.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape.map(Number) })),
      restMeta.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape })),
      'ModelMetadata inputs are GET /v2/models/{m} inputs',
    );
    const { config } = await client.call<{ config: { name: string; max_batch_size: number; input: { name: string; data_type: string; dims: string[] }[]; dynamic_batching: { max_queue_delay_microseconds: string } } }>('ModelConfig', { name: 'slow' });
    const restConfig = (await app.inject({ method: 'GET', url: '/v2/models/slow/config' })).json<{ max_batch_size: number; input: { name: string; data_type: string; dims: number[] }[] }>();
    t.equal(config.max_batch_size, restConfig.max_batch_size, 'ModelConfig max_batch_size');
    t.same(
      config.input.map((i) => ({ name: i.name, data_type: i.data_type, dims: i.dims.map(Number) })),
      restConfig.input.map((i) => ({ name: i.name, data_type: i.data_type, dims: i.dims })),
      'ModelConfig inputs are GET /v2/models/{m}/config inputs',
    );
    t.equal(config.dynamic_batching.max_queue_delay_microseconds, '30000000', 'the batcher settings as dynamic_batching');
  });

  t.test('reference tensors within 1e-4, typed and raw contents, raw and typed answers', async (t) => {
    for (const set of ['test_data_set_0', 'test_data_set_1']) {
      const input = readTensorProto(modelPath(DIR, `${set}/input_0.pb`));
      const expected = readTensorProto(modelPath(DIR, `${set}/output_0.pb`));
      const header = { name: inputName, datatype: 'FP32', shape: input.dims };
      const typed = await client.call<InferAnswer>('ModelInfer', { model_name: 'mobilenetv2', id: `typed-${set}`, inputs: [{ ...header, contents: { fp32_contents: Array.from(input.data) } }] });
      t.equal(typed.id, `typed-${set}`, 'the id is echoed');
      t.same(typed.outputs[0]?.shape.map(Number), expected.dims, `${set}: shape`);
      const rawAnswer = typed.raw_output_contents[0] as Buffer;
      t.ok(maxAbsDiff(float32Of(rawAnswer), expected.data) <= ATOL, `${set}: typed contents in, raw answer out, within ${ATOL}`);
      const raw = await client.call<InferAnswer>('ModelInfer', {
        model_name: 'mobilenetv2',
        inputs: [header],
        raw_input_contents: [Buffer.from(input.data.buffer, input.data.byteOffset, input.data.byteLength)],
        parameters: { binary_data_output: { bool_param: false } },
      });
      t.same(raw.raw_output_contents, [], 'binary_data_output false: no raw contents');
      const values = raw.outputs[0]?.contents?.fp32_contents ?? [];
      t.ok(maxAbsDiff(values, expected.data) <= ATOL, `${set}: raw contents in, typed answer out, within ${ATOL}`);
    }
  });

  t.test('BYTES photos give the /v1 answer, classification as Triton formats it', async (t) => {
    const photos = PHOTOS.map((p) => readFileSync(imagePath(p)));
    const res = await client.call<InferAnswer>('ModelInfer', {
      model_name: 'mobilenetv2',
      inputs: [{ name: 'image', datatype: 'BYTES', shape: [photos.length], contents: { bytes_contents: photos } }],
      outputs: [{ name: 'output', parameters: { classification: { int64_param: '3' } } }],
    });
    const out = res.outputs[0];
    t.equal(out?.datatype, 'BYTES');
    t.same(out?.shape.map(Number), [photos.length, 3]);
    const raw = res.raw_output_contents[0] as Buffer;
    const strings: string[] = [];
    for (let at = 0; at < raw.length; ) {
      const len = raw.readUInt32LE(at);
      strings.push(raw.subarray(at + 4, at + 4 + len).toString('utf8'));
      at += 4 + len;
    }
    for (const [i, photo] of photos.entries()) {
      const v1 = await app.inject({ method: 'POST', url: '/v1/models/mobilenetv2/predict', headers: { 'content-type': 'application/octet-stream' }, payload: photo });
      const top = v1.json<{ predictions: { label: string; index?: number }[] }>().predictions[0];
      const [, index, label] = (strings[i * 3] as string).split(':');
      t.equal(label, top?.label, `${PHOTOS[i]}: the top class is /v1's (${top?.label})`);
      if (top?.index !== undefined) t.equal(Number(index), top.index);
    }
    // The same photos in raw_input_contents.
    const rawIn = await client.call<InferAnswer>('ModelInfer', {
      model_name: 'mobilenetv2',
      inputs: [{ name: 'image', datatype: 'BYTES', shape: [photos.length] }],
      raw_input_contents: [bytesElements(photos)],
      outputs: [{ name: 'output', parameters: { classification: { int64_param: '3' } } }],
    });
    t.same(rawIn.raw_output_contents, res.raw_output_contents, 'raw BYTES input answers as typed');
  });

  t.test('concurrent calls each get their own answer', async (t) => {
    const input = readTensorProto(modelPath(DIR, 'test_data_set_0/input_0.pb'));
    const expected = readTensorProto(modelPath(DIR, 'test_data_set_0/output_0.pb'));
    const bytes = Buffer.from(input.data.buffer, input.data.byteOffset, input.data.byteLength);
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        client.call<InferAnswer>('ModelInfer', { model_name: 'mobilenetv2', id: String(i), inputs: [{ name: inputName, datatype: 'FP32', shape: input.dims }], raw_input_contents: [bytes] }),
      ),
    );
    answers.forEach((a, i) => {
      t.equal(a.id, String(i));
      t.ok(maxAbsDiff(float32Of(a.raw_output_contents[0] as Buffer), expected.data) <= ATOL, `call ${i} within ${ATOL}`);
    });
  });

  t.test('errors come back as gRPC codes with the message', async (t) => {
    const notFound = await refusal(client.call('ModelInfer', { model_name: 'nope', inputs: [{ name: 'x', datatype: 'FP32', shape: [1] }] }));
    t.equal(notFound.code, grpc.status.NOT_FOUND);
    t.match(notFound.details, /no model named "nope"/);
    t.same(notFound.metadata.get('ocular-error-code'), ['MODEL_NOT_FOUND']);
    t.equal((await refusal(client.call('ModelMetadata', { name: 'nope' }))).code, grpc.status.NOT_FOUND);
    t.equal((await refusal(client.call('ModelConfig', { name: 'mobilenetv2', version: '9' }))).code, grpc.status.NOT_FOUND, 'a version not served');

    const wrongType = await refusal(client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: inputName, datatype: 'INT32', shape: [1, 3, 224, 224], contents: { int_contents: [1] } }] }));
    t.equal(wrongType.code, grpc.status.INVALID_ARGUMENT);
    t.match(wrongType.details, /is INT32 but model "mobilenetv2" takes FP32/);
    const wrongCount = await refusal(client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: inputName, datatype: 'FP32', shape: [1, 3, 224, 224], contents: { fp32_contents: [1, 2] } }] }));
    t.equal(wrongCount.code, grpc.status.INVALID_ARGUMENT);
    t.match(wrongCount.details, /has 2 elements, its shape holds 150528/);
    const both = await refusal(
      client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: inputName, datatype: 'FP32', shape: [1, 3, 224, 224], contents: { fp32_contents: [1] } }], raw_input_contents: [Buffer.alloc(4)] }),
    );
    t.equal(both.code, grpc.status.INVALID_ARGUMENT, 'contents and raw_input_contents together');
    const tooManyImages = await refusal(
      client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: 'image', datatype: 'BYTES', shape: [9], contents: { bytes_contents: Array.from({ length: 9 }, () => Buffer.from('x')) } }] }),
    );
    t.equal(tooManyImages.code, grpc.status.INVALID_ARGUMENT);
    t.match(tooManyImages.details, /at most 8/);
    const notImage = await refusal(client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: 'image', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [Buffer.from('not an image')] } }] }));
    t.equal(notImage.code, grpc.status.INVALID_ARGUMENT, 'an unsupported image format (415 over HTTP)');

    const big = await refusal(client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: inputName, datatype: 'FP32', shape: [8, 3, 224, 224] }], raw_input_contents: [Buffer.alloc(LIMIT + 1)] }));
    t.equal(big.code, grpc.status.RESOURCE_EXHAUSTED, 'a message over the tensor body limit');
  });

  t.test('a deadline that expires in the queue and a cancelled call drop their queued work', async (t) => {
    const input = readTensorProto(modelPath(DIR, 'test_data_set_0/input_0.pb'));
    const request: Message = {
      model_name: 'slow',
      inputs: [{ name: inputName, datatype: 'FP32', shape: input.dims }],
      raw_input_contents: [Buffer.from(input.data.buffer, input.data.byteOffset, input.data.byteLength)],
    };
    const dropped = async () => {
      const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
      const m = /ocular_requests_dropped_total\{model="slow",reason="client_closed"\} (\d+)/.exec(text);
      return m === null ? 0 : Number(m[1]);
    };
    const expired = await refusal(client.call('ModelInfer', request, { deadlineMs: 300 }));
    t.equal(expired.code, grpc.status.DEADLINE_EXCEEDED, 'the client deadline passed while queued');
    const { call, done } = client.start('ModelInfer', request);
    setTimeout(() => call.cancel(), 200);
    t.equal((await refusal(done)).code, grpc.status.CANCELLED);
    // Both counted as drops once the server saw them go: well before the 30 s flush would have run them (a run
    // after the client left is counted as a drop too), so a count reached here is work left out of the queue.
    const until = performance.now() + 20_000;
    while (performance.now() < until && (await dropped()) < 2) await new Promise((r) => setTimeout(r, 50));
    t.equal(await dropped(), 2, 'both dropped from the queue (client_closed), before any flush');
    t.equal(app.grpc.open, 0, 'no call is left open');
  });

  t.test('health follows readiness, and draining refuses work UNAVAILABLE with a retry hint', async (t) => {
    const definition = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true });
    const Health = (grpc.loadPackageDefinition(definition) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } }).grpc.health.v1.Health;
    const health = new Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Check: (req: object, cb: (e: grpc.ServiceError | null, r: { status: string }) => void) => void };
    t.teardown(() => health.close());
    const check = (service: string) => new Promise<string>((resolve, reject) => health.Check({ service }, (e, r) => (e !== null ? reject(e) : resolve(r.status))));
    t.equal(await check(''), 'SERVING');
    t.equal(await check('inference.GRPCInferenceService'), 'SERVING');

    app.ocular.models.startDraining();
    app.grpc.drain();
    t.equal(await check(''), 'NOT_SERVING', 'NOT_SERVING while draining');
    t.equal(await check('inference.GRPCInferenceService'), 'NOT_SERVING');
    t.same(await client.call('ServerReady', {}), { ready: false });
    t.same(await client.call('ModelReady', { name: 'mobilenetv2' }), { ready: false });
    const refused = await refusal(client.call('ModelInfer', { model_name: 'mobilenetv2', inputs: [{ name: inputName, datatype: 'FP32', shape: [1] }] }));
    t.equal(refused.code, grpc.status.UNAVAILABLE);
    t.same(refused.metadata.get('ocular-error-code'), ['DRAINING']);
    t.same(refused.metadata.get('retry-after'), ['1']);
    t.same(refused.metadata.get('grpc-retry-pushback-ms'), ['1000']);
  });
});
