/**
 * The gRPC transport without models: API keys in metadata (the probes open, as over HTTP), server reflection,
 * TLS from a certificate and key file, the catalog's codes as gRPC statuses with their retry hints, and close.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import t from 'tap';
import { OcularError } from '../../src/errors.js';
import { grpcCodeOf, grpcStatusOf } from '../../src/protocols/grpc/status.js';
import { buildTestApp, sharedManifestPath } from '../helpers/app.js';
import { findExecutable, toolTestOptions } from '../helpers/tools.js';
import { inferenceClient, refusal } from './client.js';

t.setTimeout(60_000);

const KEY = 'grpc-test-key-0123456789';

t.test('the catalog maps to gRPC codes in one table, 503s with a retry hint', async (t) => {
  t.equal(grpcCodeOf('INVALID_REQUEST'), grpc.status.INVALID_ARGUMENT);
  t.equal(grpcCodeOf('IMAGE_DECODE_FAILED'), grpc.status.INVALID_ARGUMENT);
  t.equal(grpcCodeOf('UNAUTHORIZED'), grpc.status.UNAUTHENTICATED);
  t.equal(grpcCodeOf('FORBIDDEN'), grpc.status.PERMISSION_DENIED);
  t.equal(grpcCodeOf('MODEL_CONTROL_DISABLED'), grpc.status.PERMISSION_DENIED);
  t.equal(grpcCodeOf('MODEL_NOT_FOUND'), grpc.status.NOT_FOUND);
  t.equal(grpcCodeOf('CLIENT_CLOSED_REQUEST'), grpc.status.CANCELLED);
  t.equal(grpcCodeOf('RESPONSE_TOO_LARGE'), grpc.status.RESOURCE_EXHAUSTED);
  t.equal(grpcCodeOf('BODY_TOO_LARGE'), grpc.status.RESOURCE_EXHAUSTED);
  t.equal(grpcCodeOf('DRAINING'), grpc.status.UNAVAILABLE);
  t.equal(grpcCodeOf('MODEL_NOT_READY'), grpc.status.UNAVAILABLE);
  t.equal(grpcCodeOf('INTERNAL'), grpc.status.INTERNAL);
  const full = grpcStatusOf(new OcularError('QUEUE_FULL', 'model m has 9 images in progress'));
  t.equal(full.code, grpc.status.RESOURCE_EXHAUSTED);
  t.same(full.metadata?.get('retry-after'), ['1']);
  t.same(full.metadata?.get('grpc-retry-pushback-ms'), ['1000']);
  t.same(full.metadata?.get('ocular-error-code'), ['QUEUE_FULL']);
  const internal = grpcStatusOf(new OcularError('INTERNAL', 'secret detail at /srv/x.onnx'));
  t.equal(internal.details, 'internal error', 'a 5xx says only the catalog message');
  t.same(grpcStatusOf(new OcularError('INVALID_REQUEST', 'bad shape')).metadata?.get('retry-after'), [], 'no retry hint on a 400');
});

t.test('API keys in metadata; probes open; reflection lists the services', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-grpc-keys-'));
  writeFileSync(join(dir, 'keys'), `${KEY}\n`);
  const { app } = await buildTestApp(t, { manifestPath: sharedManifestPath, load: false, config: { authKeysFile: join(dir, 'keys'), manifestWatchMs: 0 } });
  const port = await app.grpc.listen('127.0.0.1', 0);
  const client = inferenceClient(port);
  t.teardown(() => client.close());
  const bearer = new grpc.Metadata();
  bearer.set('authorization', `Bearer ${KEY}`);
  const apiKey = new grpc.Metadata();
  apiKey.set('x-api-key', KEY);
  const wrong = new grpc.Metadata();
  wrong.set('authorization', 'Bearer not-the-key-0123456789');

  const none = await refusal(client.call('ServerMetadata', {}));
  t.equal(none.code, grpc.status.UNAUTHENTICATED, 'no key');
  t.equal(none.details, 'a valid API key is required');
  t.equal((await refusal(client.call('ServerMetadata', {}, { metadata: wrong }))).code, grpc.status.UNAUTHENTICATED, 'a wrong key');
  t.equal((await client.call<{ name: string }>('ServerMetadata', {}, { metadata: bearer })).name, 'ocular', 'Bearer key');
  t.equal((await client.call<{ name: string }>('ServerMetadata', {}, { metadata: apiKey })).name, 'ocular', 'x-api-key');
  t.same(await client.call('ServerLive', {}), { live: true }, 'ServerLive needs no key');
  t.same(await client.call('ServerReady', {}), { ready: false }, 'ServerReady needs no key (models not loaded: false)');
  t.equal((await refusal(client.call('ModelInfer', { model_name: 'mobilenetv2' }))).code, grpc.status.UNAUTHENTICATED, 'inference needs a key');

  // Reflection, through its own proto.
  const require = createRequire(import.meta.url);
  const reflectionProto = join(require.resolve('@grpc/reflection'), '..', '..', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto');
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(reflectionProto, { keepCase: true })) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } };
  };
  const reflection = new pkg.grpc.reflection.v1.ServerReflection(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    ServerReflectionInfo(metadata?: grpc.Metadata): grpc.ClientDuplexStream<object, { list_services_response?: { service: { name: string }[] }; error_response?: unknown }>;
  };
  t.teardown(() => reflection.close());
  const list = (metadata: grpc.Metadata) =>
    new Promise<string[]>((resolve, reject) => {
      const stream = reflection.ServerReflectionInfo(metadata);
      stream.on('data', (r) => {
        resolve((r.list_services_response?.service ?? []).map((s: { name: string }) => s.name));
        stream.end();
      });
      stream.on('error', reject);
      stream.write({ list_services: '*' });
    });
  t.equal(((await refusal(list(new grpc.Metadata()))) as grpc.ServiceError).code, grpc.status.UNAUTHENTICATED, 'reflection needs a key');
  const services = await list(bearer);
  t.ok(services.includes('inference.GRPCInferenceService'), `reflection lists ${services.join(', ')}`);
  t.ok(services.includes('grpc.health.v1.Health'));
});

const openssl = findExecutable('openssl');
t.test('TLS from a certificate and key file', toolTestOptions(openssl, 'openssl'), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-grpc-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync(openssl as string, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  const { app } = await buildTestApp(t, { manifestPath: sharedManifestPath, load: false, config: { grpcTlsCertFile: cert, grpcTlsKeyFile: key, manifestWatchMs: 0 } });
  const port = await app.grpc.listen('127.0.0.1', 0);
  const { readFileSync } = await import('node:fs');
  const secure = inferenceClient(port, grpc.credentials.createSsl(readFileSync(cert)), { 'grpc.ssl_target_name_override': 'localhost' });
  t.teardown(() => secure.close());
  t.same(await secure.call('ServerLive', {}), { live: true }, 'a TLS client is served');
  const plain = inferenceClient(port);
  t.teardown(() => plain.close());
  t.equal((await refusal(plain.call('ServerLive', {}, { deadlineMs: 3000 }))).code, grpc.status.UNAVAILABLE, 'a plaintext client is not');
  await app.grpc.close(1000);
  t.equal((await refusal(secure.call('ServerLive', {}, { deadlineMs: 3000 }))).code, grpc.status.UNAVAILABLE, 'closed: no longer served');
});
