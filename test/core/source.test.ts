import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { resolveSource, sha256File, SourceError, type SourceOptions } from '../../src/core/source.js';
import { makeCert, startPlainServer, startServer } from '../helpers/https-server.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function tempDir(t: Test, prefix = 'ocular-source-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs fn expecting a SourceError; returns its message ('' and a failure otherwise). */
async function sourceErrorOf(t: Test, fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (err) {
    t.type(err, SourceError);
    return err instanceof Error ? err.message : '';
  }
  t.fail('expected a SourceError');
  return '';
}

// ---------------------------------------------------------------------------------------------------------------
// Local paths
// ---------------------------------------------------------------------------------------------------------------

t.test('local paths', async (t) => {
  const dir = await tempDir(t);
  const bytes = randomBytes(4096);
  await mkdir(join(dir, 'models'));
  const file = join(dir, 'models', 'm.onnx');
  await writeFile(file, bytes);
  const base: SourceOptions = { baseDir: dir, cacheDir: join(dir, 'cache'), maxBytes: 1 << 20 };

  t.test('a relative path is resolved against baseDir', async (t) => {
    t.equal(await resolveSource('models/m.onnx', base), file);
    t.equal(await resolveSource('./models/../models/m.onnx', base), file);
  });

  t.test('an absolute path is used as it is, whatever baseDir', async (t) => {
    t.equal(await resolveSource(file, { ...base, baseDir: '/nonexistent' }), file);
  });

  t.test('a missing file is a SourceError naming the path', async (t) => {
    const message = await sourceErrorOf(t, () => resolveSource('models/absent.onnx', base));
    t.ok(message.includes(join(dir, 'models', 'absent.onnx')), message);
  });

  t.test('a folder is not a model file', async (t) => {
    const message = await sourceErrorOf(t, () => resolveSource('models', base));
    t.ok(message.includes(join(dir, 'models')), message);
    t.match(message, /not a file/);
  });

  t.test('a matching sha256 passes', async (t) => {
    t.equal(await resolveSource('models/m.onnx', { ...base, sha256: sha256(bytes) }), file);
    t.equal(await sha256File(file), sha256(bytes));
  });

  t.test('a sha256 mismatch fails naming the path and both hashes', async (t) => {
    const expected = 'f'.repeat(64);
    const message = await sourceErrorOf(t, () => resolveSource('models/m.onnx', { ...base, sha256: expected }));
    t.ok(message.includes(file), 'names the file');
    t.ok(message.includes(sha256(bytes)), 'names the actual hash');
    t.ok(message.includes(expected), 'names the expected hash');
  });

  t.test('a local source never touches the cache dir', async (t) => {
    await resolveSource('models/m.onnx', base);
    await t.rejects(readdir(base.cacheDir), { code: 'ENOENT' });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// URL sources, against a local HTTPS server with a certificate made for this run (test/helpers/https-server.ts)
// ---------------------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------------------
// http:// sources: refused unless allowed (OCULAR_ALLOW_HTTP_SOURCES), then fetched like https://
// ---------------------------------------------------------------------------------------------------------------

t.test('http:// sources', async (t) => {
  const model = randomBytes(64 * 1024);
  const modelSha = sha256(model);
  const other = randomBytes(1024);
  const plain = await startPlainServer(t, {
    '/model.onnx': (_req, res) => {
      res.writeHead(200, { 'content-length': model.length }).end(model);
    },
    '/other.onnx': (_req, res) => {
      res.writeHead(200, { 'content-length': other.length }).end(other);
    },
    '/chunked.onnx': (_req, res) => {
      res.writeHead(200);
      for (let i = 0; i < model.length; i += 4096) res.write(model.subarray(i, i + 4096));
      res.end();
    },
    '/stall.onnx': (_req, res) => {
      res.writeHead(200, { 'content-length': model.length });
      res.write(model.subarray(0, 1024));
    },
  });

  async function options(t: Test, over: Partial<SourceOptions> = {}): Promise<SourceOptions> {
    const dir = await tempDir(t, 'ocular-cache-');
    return { baseDir: dir, cacheDir: join(dir, 'cache'), sha256: modelSha, maxBytes: 1 << 20, ...over };
  }

  t.test('without allowHttp an http:// source is refused before any request, naming the option', async (t) => {
    for (const over of [{}, { allowHttp: false }]) {
      const opts = await options(t, over);
      const before = plain.requests.length;
      const message = await sourceErrorOf(t, () => resolveSource(plain.url('/model.onnx'), opts));
      t.match(message, /OCULAR_ALLOW_HTTP_SOURCES=true/);
      t.ok(message.includes(plain.url('/model.onnx')), 'names the URL');
      t.equal(plain.requests.length, before, 'no request');
      await t.rejects(readdir(opts.cacheDir), { code: 'ENOENT' }, 'nothing cached');
    }
  });

  t.test('with allowHttp it is downloaded, verified and cached like https://', async (t) => {
    const opts = await options(t, { allowHttp: true });
    const path = await resolveSource(plain.url('/model.onnx'), opts);
    t.equal(path, join(opts.cacheDir, `${modelSha}.onnx`));
    t.same(await readFile(path), model);
    t.same(await resolveSource(plain.url('/chunked.onnx'), await options(t, { allowHttp: true })).then(readFile), model, 'chunked');
  });

  t.test('with allowHttp the sha256 is still required and checked', async (t) => {
    const { sha256: _sha, ...noSha } = await options(t, { allowHttp: true });
    t.match(await sourceErrorOf(t, () => resolveSource(plain.url('/model.onnx'), noSha)), /has no sha256/);
    const opts = await options(t, { allowHttp: true });
    const message = await sourceErrorOf(t, () => resolveSource(plain.url('/other.onnx'), opts));
    t.ok(message.includes(sha256(other)) && message.includes(modelSha), 'names both hashes');
    t.same(await readdir(opts.cacheDir), [], 'nothing cached');
  });

  t.test('with allowHttp the size cap and the stall limit apply', async (t) => {
    const capped = await options(t, { allowHttp: true, maxBytes: 16 * 1024 });
    t.match(await sourceErrorOf(t, () => resolveSource(plain.url('/model.onnx'), capped)), /over the cap/);
    t.match(await sourceErrorOf(t, () => resolveSource(plain.url('/chunked.onnx'), capped)), /exceeded the cap/);
    const stalled = await options(t, { allowHttp: true, stallTimeoutMs: 300 });
    t.match(await sourceErrorOf(t, () => resolveSource(plain.url('/stall.onnx'), stalled)), /stalled|timed out/);
    t.same(await readdir(stalled.cacheDir), []);
  });
});

const tls = await makeCert();
const urlSkip = typeof tls === 'string' ? { skip: tls } : {};
if (typeof tls === 'string') t.comment(`SKIP URL source tests: ${tls}`);

t.test('URL sources', urlSkip, async (t) => {
  if (typeof tls === 'string') return;
  const ca = tls.cert;
  const model = randomBytes(64 * 1024);
  const modelSha = sha256(model);
  const other = randomBytes(64 * 1024);
  const half = model.subarray(0, model.length / 2);
  const cap = 16 * 1024;

  const plain = await startPlainServer(t, {
    '/model.onnx': (_req, res) => {
      res.writeHead(200, { 'content-length': model.length }).end(model);
    },
  });
  const server = await startServer(t, tls, {
    '/redirect-plain': (_req, res) => {
      res.writeHead(302, { location: plain.url('/model.onnx') }).end();
    },
    '/model.onnx': (_req, res) => {
      res.writeHead(200, { 'content-length': model.length }).end(model);
    },
    '/chunked.onnx': (_req, res) => {
      // No Content-Length: the body is sent chunked.
      res.writeHead(200);
      for (let i = 0; i < model.length; i += 4096) res.write(model.subarray(i, i + 4096));
      res.end();
    },
    '/other.onnx': (_req, res) => {
      res.writeHead(200, { 'content-length': other.length }).end(other);
    },
    '/error': (_req, res) => {
      res.writeHead(500).end('boom');
    },
    '/stall.onnx': (_req, res) => {
      // Half the body, then nothing: the connection stays open until the client gives up.
      res.writeHead(200, { 'content-length': model.length });
      res.write(half);
    },
    '/short.onnx': (_req, res) => {
      // Promises the whole model, sends half, then the connection closes.
      res.writeHead(200, { 'content-length': model.length });
      res.write(half, () => res.socket?.destroy());
    },
    '/redirect': (_req, res) => {
      res.writeHead(302, { location: '/model.onnx' }).end();
    },
    '/redirect-twice': (_req, res) => {
      res.writeHead(301, { location: '/redirect' }).end();
    },
    '/redirect-loop': (_req, res) => {
      res.writeHead(302, { location: '/redirect-loop' }).end();
    },
    '/redirect-http': (_req, res) => {
      res.writeHead(302, { location: 'http://127.0.0.1:1/model.onnx' }).end();
    },
  });

  /** Options for one test: a fresh cache dir, the test CA, the model's hash, a generous cap. */
  async function options(t: Test, over: Partial<SourceOptions> = {}): Promise<SourceOptions> {
    const dir = await tempDir(t, 'ocular-cache-');
    return { baseDir: dir, cacheDir: join(dir, 'cache'), sha256: modelSha, maxBytes: 1 << 20, ca, ...over };
  }

  async function cacheEntries(opts: SourceOptions): Promise<string[]> {
    return (await readdir(opts.cacheDir)).sort();
  }

  t.test('the first fetch downloads and caches at <cacheDir>/<sha256>.onnx', async (t) => {
    const opts = await options(t);
    const before = server.requests.length;
    const path = await resolveSource(server.url('/model.onnx'), opts);
    t.equal(path, join(opts.cacheDir, `${modelSha}.onnx`));
    t.same(await readFile(path), model);
    t.same(await cacheEntries(opts), [`${modelSha}.onnx`], 'no temporary file left');
    t.same(server.requests.slice(before), ['/model.onnx']);
  });

  t.test('the second fetch reuses the cache with no request', async (t) => {
    const opts = await options(t);
    const first = await resolveSource(server.url('/model.onnx'), opts);
    const before = server.requests.length;
    const second = await resolveSource(server.url('/model.onnx'), opts);
    t.equal(second, first);
    t.equal(server.requests.length, before, 'no request to the server');
    // Even a URL that would now fail is served from the cache: the hash names the content.
    t.equal(await resolveSource(server.url('/error'), opts), first);
    t.equal(server.requests.length, before);
  });

  t.test('a chunked body (no Content-Length) is downloaded', async (t) => {
    const opts = await options(t);
    const path = await resolveSource(server.url('/chunked.onnx'), opts);
    t.same(await readFile(path), model);
  });

  t.test('a 404 is a SourceError with HTTP 404, nothing cached', async (t) => {
    const opts = await options(t);
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/absent.onnx'), opts));
    t.match(message, /HTTP 404/);
    t.ok(message.includes(server.url('/absent.onnx')), 'names the URL');
    t.same(await cacheEntries(opts), []);
  });

  t.test('a 500 is a SourceError with HTTP 500, nothing cached', async (t) => {
    const opts = await options(t);
    t.match(await sourceErrorOf(t, () => resolveSource(server.url('/error'), opts)), /HTTP 500/);
    t.same(await cacheEntries(opts), []);
  });

  t.test('a wrong hash fails naming both hashes and leaves nothing in the cache', async (t) => {
    const opts = await options(t);
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/other.onnx'), opts));
    t.ok(message.includes(sha256(other)), 'names the actual hash');
    t.ok(message.includes(modelSha), 'names the expected hash');
    t.same(await cacheEntries(opts), [], 'no file, no .part');
  });

  t.test('a Content-Length over maxBytes fails, nothing cached', async (t) => {
    const opts = await options(t, { maxBytes: cap });
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/model.onnx'), opts));
    t.match(message, /cap/);
    t.ok(message.includes(String(cap)), message);
    t.same(await cacheEntries(opts), []);
  });

  t.test('a chunked body growing past maxBytes fails, nothing cached', async (t) => {
    const opts = await options(t, { maxBytes: cap });
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/chunked.onnx'), opts));
    t.match(message, /exceeded the cap/);
    t.same(await cacheEntries(opts), []);
  });

  t.test('a server that stalls mid-stream is given up on, nothing cached', async (t) => {
    const opts = await options(t, { stallTimeoutMs: 300 });
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/stall.onnx'), opts));
    t.match(message, /stalled|timed out/);
    t.same(await cacheEntries(opts), []);
  });

  t.test('a body shorter than its Content-Length fails, nothing cached', async (t) => {
    const opts = await options(t);
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/short.onnx'), opts));
    t.match(message, /download of .*short\.onnx (failed|ended after)/);
    t.same(await cacheEntries(opts), []);
  });

  t.test('redirects to another https path are followed', async (t) => {
    const opts = await options(t);
    const before = server.requests.length;
    const path = await resolveSource(server.url('/redirect-twice'), opts);
    t.same(await readFile(path), model);
    t.same(server.requests.slice(before), ['/redirect-twice', '/redirect', '/model.onnx']);
  });

  t.test('a redirect loop stops after a few hops', async (t) => {
    const opts = await options(t);
    t.match(await sourceErrorOf(t, () => resolveSource(server.url('/redirect-loop'), opts)), /too many redirects/);
    t.same(await cacheEntries(opts), []);
  });

  t.test('a redirect to http:// is refused, naming the option', async (t) => {
    const opts = await options(t);
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/redirect-http'), opts));
    t.match(message, /non-https/);
    t.match(message, /OCULAR_ALLOW_HTTP_SOURCES=true/);
    const before = plain.requests.length;
    t.match(await sourceErrorOf(t, () => resolveSource(server.url('/redirect-plain'), opts)), /non-https/);
    t.equal(plain.requests.length, before, 'the http server is never asked');
    t.same(await cacheEntries(opts), []);
  });

  t.test('with allowHttp a redirect from https:// to http:// is followed (the sha256 still checked)', async (t) => {
    const opts = await options(t, { allowHttp: true });
    const before = plain.requests.length;
    const path = await resolveSource(server.url('/redirect-plain'), opts);
    t.same(await readFile(path), model);
    t.same(plain.requests.slice(before), ['/model.onnx']);
    const wrong = await options(t, { allowHttp: true, sha256: 'f'.repeat(64) });
    t.match(await sourceErrorOf(t, () => resolveSource(server.url('/redirect-plain'), wrong)), /has sha256/);
  });

  t.test('a damaged cached file is replaced by a fresh download', async (t) => {
    const opts = await options(t);
    const cached = join(opts.cacheDir, `${modelSha}.onnx`);
    await mkdir(opts.cacheDir, { recursive: true });
    await writeFile(cached, other);
    const before = server.requests.length;
    t.equal(await resolveSource(server.url('/model.onnx'), opts), cached);
    t.same(await readFile(cached), model);
    t.equal(server.requests.length, before + 1, 'downloaded again');
    t.same(await cacheEntries(opts), [`${modelSha}.onnx`]);
  });

  t.test('without the test CA the server is not trusted', async (t) => {
    const { ca: _ca, ...opts } = await options(t);
    const message = await sourceErrorOf(t, () => resolveSource(server.url('/model.onnx'), opts));
    t.match(message, /download of .* failed/);
    t.same(await cacheEntries(opts), []);
  });

  t.test('a URL source without sha256 is refused before any request', async (t) => {
    const { sha256: _sha, ...opts } = await options(t);
    const before = server.requests.length;
    t.match(await sourceErrorOf(t, () => resolveSource(server.url('/model.onnx'), opts)), /has no sha256/);
    t.equal(server.requests.length, before);
  });
});
