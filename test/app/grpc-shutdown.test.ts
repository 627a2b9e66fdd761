/**
 * SIGTERM with the gRPC port on, through the real server (src/main.ts as a child, OCULAR_GRPC_PORT on a free port):
 * health turns NOT_SERVING at once, a new ModelInfer is refused UNAVAILABLE DRAINING, the call already queued is
 * answered in full before the transport shuts down (tryShutdown within the grace), and the process exits 0.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import t from 'tap';
import { sharedModel, writeManifest } from '../helpers/app.js';
import { freePort, startServer } from '../helpers/server.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { inferenceClient, refusal } from '../grpc/client.js';

t.setTimeout(120_000);

t.test('SIGTERM: gRPC health NOT_SERVING, new calls refused, the queued call answered, exit 0', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', 'images/cat_chelsea.png'), async (t) => {
  // A batch waits up to 5 s to fill (the queue timeout raised past it): the call sent before the signal is still queued
  // when it comes, even on a slow machine. Tuning off: warm-up tuning may choose a batch limit of 1 on a busy machine,
  // and a batch of one runs at once (the call never waits in the queue).
  const manifest = writeManifest([{ ...sharedModel('mobilenetv2'), batching: { maxBatchSize: 8, maxQueueDelayMs: 5000, maxQueueSize: 16, tune: 'off' } }]);
  const grpcPort = await freePort();
  const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_GRPC_PORT: String(grpcPort), OCULAR_SHUTDOWN_GRACE_MS: '20000', OCULAR_REQUEST_TIMEOUT_MS: '60000', OCULAR_LOG_LEVEL: 'info' });
  t.teardown(server.kill);
  await server.waitFor((l) => l['msg'] === 'ready', 'ready');
  const client = inferenceClient(grpcPort);
  t.teardown(() => client.close());
  const Health = (grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String })) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  }).grpc.health.v1.Health;
  const health = new Health(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Check(req: object, cb: (e: grpc.ServiceError | null, r: { status: string }) => void): void;
  };
  t.teardown(() => health.close());
  const check = () => new Promise<string>((resolve, reject) => health.Check({ service: '' }, (e, r) => (e !== null ? reject(e) : resolve(r.status))));
  t.equal(await check(), 'SERVING');

  const photo = readFileSync(imagePath('cat_chelsea.png'));
  const request = { model_name: 'mobilenetv2', inputs: [{ name: 'image', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [photo] } }], outputs: [{ name: 'output', parameters: { classification: { int64_param: '1' } } }] };
  const queued = client.call<{ raw_output_contents: Buffer[] }>('ModelInfer', request);
  // Signalled once the call waits in the model's queue (its depth on /metrics).
  const httpPort = await server.port;
  const depth = async () => Number(/ocular_queue_depth\{model="mobilenetv2"[^}]*\} (\d+)/.exec(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text())?.[1] ?? 0);
  // Bounded: a call that never shows in the queue fails here, not at the file's timeout.
  let waited = 0;
  while ((await depth()) < 1 && waited++ < 400) await new Promise((r) => setTimeout(r, 50));
  t.ok(waited <= 400, 'the call waits in the queue before the signal');
  server.child.kill('SIGTERM');
  await server.waitFor((l) => l['msg'] === 'shutting down: draining', 'draining');
  t.equal(await check(), 'NOT_SERVING', 'health is NOT_SERVING while draining');
  const refused = await refusal(client.call('ModelInfer', request));
  t.equal(refused.code, grpc.status.UNAVAILABLE, 'a new call is refused UNAVAILABLE');
  t.same(refused.metadata.get('ocular-error-code'), ['DRAINING']);
  const answer = await queued;
  t.match(answer.raw_output_contents[0]?.toString('utf8') ?? '', /:285:Egyptian cat$/, 'the call queued before the signal is answered in full');
  const { code } = await server.exited;
  t.equal(code, 0, 'the process exits 0 once drained');
});
