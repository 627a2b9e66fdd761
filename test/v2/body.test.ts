/**
 * v2 request bodies read into memory of their own (src/protocols/oip/body.ts): a declared body into one buffer of
 * its size, a chunked one into segments growing in bounded steps, each part the front of an ArrayBuffer nothing
 * else uses (so it can be transferred to a parse thread); Fastify's errors past the limit or for a wrong length;
 * and each route's limit (the tensor body limit for inference, less for the repository API).
 */
import { PassThrough } from 'node:stream';
import t from 'tap';
import type { FastifyRequest } from 'fastify';
import { SEGMENT_MAX_BYTES, SEGMENT_MIN_BYTES, joinBody, readInferBody, type InferBody } from '../../src/protocols/oip/body.js';
import { buildTestApp } from '../helpers/app.js';
import { writeTinyManifest } from './helpers.js';

const MiB = 1024 * 1024;

/** Feeds `bytes` in `chunk`-sized writes to readInferBody under `headers`; resolves with the body or the error. */
function read(bytes: Buffer, headers: Record<string, string>, limit: number, chunk = 64 * 1024): Promise<{ err: (Error & { code?: string }) | null; body?: InferBody }> {
  return new Promise((resolve) => {
    const payload = new PassThrough();
    readInferBody({ headers } as unknown as FastifyRequest, payload, limit, (err, body) => resolve({ err, ...(body !== undefined ? { body } : {}) }));
    for (let at = 0; at < bytes.length; at += chunk) payload.write(bytes.subarray(at, at + chunk));
    payload.end();
  });
}

/** Bytes that tell their positions apart. */
function pattern(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + (i >> 8)) & 0xff;
  return b;
}

const ownsItsBuffer = (p: Uint8Array) => p.byteOffset === 0 && p.buffer instanceof ArrayBuffer;

t.test('a body with a Content-Length is read into one buffer of that size', async (t) => {
  const bytes = pattern(3 * MiB + 5);
  const { err, body } = await read(bytes, { 'content-length': String(bytes.length) }, 64 * MiB);
  t.equal(err, null);
  t.equal(body?.parts.length, 1, 'one part');
  const [part] = body?.parts ?? [];
  t.ok(part !== undefined && ownsItsBuffer(part) && part.buffer.byteLength === bytes.length, 'the whole of an ArrayBuffer of the declared size');
  t.equal(body?.byteLength, bytes.length);
  t.ok(body !== undefined && joinBody(body).equals(bytes), 'the bytes sent, in order');
});

t.test('a chunked body is read into segments that double from 64 KiB up to 8 MiB, never copied whole', async (t) => {
  const bytes = pattern(40 * MiB + 123);
  const { err, body } = await read(bytes, { 'transfer-encoding': 'chunked' }, 64 * MiB, 100_000);
  t.equal(err, null);
  const sizes = (body?.parts ?? []).map((p) => p.buffer.byteLength);
  t.equal(sizes[0], SEGMENT_MIN_BYTES, 'the first segment is the smallest');
  for (let i = 1; i < sizes.length; i++) {
    t.ok((sizes[i] ?? 0) <= Math.min(2 * (sizes[i - 1] ?? 0), SEGMENT_MAX_BYTES), `segment ${i}: ${sizes[i]} bytes, at most twice the one before and at most 8 MiB`);
  }
  t.ok((body?.parts ?? []).every(ownsItsBuffer), 'each part is the front of an ArrayBuffer of its own');
  t.equal(new Set(body?.parts.map((p) => p.buffer)).size, body?.parts.length, 'no two parts share a buffer');
  const unused = sizes.reduce((a, b) => a + b, 0) - bytes.length;
  t.ok(unused < SEGMENT_MAX_BYTES, `memory past the bytes read is under one segment (${unused} bytes)`);
  t.equal(body?.byteLength, bytes.length);
  t.ok(body !== undefined && joinBody(body).equals(bytes), 'the bytes sent, in order');
});

t.test('an empty body is an empty InferBody', async (t) => {
  for (const headers of [{ 'content-length': '0' }, { 'transfer-encoding': 'chunked' }]) {
    const { err, body } = await read(Buffer.alloc(0), headers, MiB);
    t.equal(err, null);
    t.equal(body?.byteLength, 0);
  }
});

t.test('past the limit: 413, before any byte is read when the size is declared; a wrong length: 400', async (t) => {
  const declared = await read(pattern(10), { 'content-length': String(2 * MiB) }, MiB);
  t.equal(declared.err?.code, 'FST_ERR_CTP_BODY_TOO_LARGE', 'declared past the limit');
  const chunked = await read(pattern(MiB + 1), { 'transfer-encoding': 'chunked' }, MiB);
  t.equal(chunked.err?.code, 'FST_ERR_CTP_BODY_TOO_LARGE', 'chunked past the limit');
  const longer = await read(pattern(2000), { 'content-length': '1000' }, MiB);
  t.equal(longer.err?.code, 'FST_ERR_CTP_INVALID_CONTENT_LENGTH', 'longer than declared');
  const shorter = await read(pattern(500), { 'content-length': '1000' }, MiB);
  t.equal(shorter.err?.code, 'FST_ERR_CTP_INVALID_CONTENT_LENGTH', 'shorter than declared');
});

t.test('each v2 route reads within its own limit: the tensor body limit for inference, 64 KiB for the repository API', async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, { manifestPath: writeTinyManifest(dir), config: { device: 'cpu', manifestWatchMs: 0, tensorBodyLimitBytes: MiB, bodyLimitBytes: 256 * 1024 } });
  const big = await app.inject({ method: 'POST', url: '/v2/models/add/infer', payload: Buffer.alloc(MiB + 1, 0x20), headers: { 'content-type': 'application/json' } });
  t.equal(big.statusCode, 413, 'inference: past the tensor body limit');
  t.equal(big.json<{ code: string }>().code, 'BODY_TOO_LARGE');
  // Under the tensor limit and over the /v1 body limit: read, then parsed (and refused for what it holds).
  const padded = Buffer.from(`{"inputs":[{"name":"A","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"B","shape":[1,4],"datatype":"FP32","data":[1,1,1,1]}]}${' '.repeat(512 * 1024)}`);
  const ok = await app.inject({ method: 'POST', url: '/v2/models/add/infer', payload: padded, headers: { 'content-type': 'application/json' } });
  t.equal(ok.statusCode, 200, 'inference: a body over the /v1 limit and under the tensor limit is served');
  const index = await app.inject({ method: 'POST', url: '/v2/repository/index', payload: Buffer.alloc(100 * 1024, 0x20), headers: { 'content-type': 'application/json' } });
  t.equal(index.statusCode, 413, 'repository index: past its 64 KiB');
  const small = await app.inject({ method: 'POST', url: '/v2/repository/index', payload: '{"ready":true}', headers: { 'content-type': 'application/json' } });
  t.equal(small.statusCode, 200, 'repository index: a small body is read and parsed');
});
