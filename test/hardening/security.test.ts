/**
 * Security (issue #5, part 6): optional API-key auth (keys from a file, constant-time, never logged), probes and
 * metrics configurable apart, security headers, sanitised request ids, no route that fetches a client's URL,
 * nothing internal in answers.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { buildTestApp } from '../helpers/app.js';
import { imagePath, projectRoot, sharedTestOptions } from '../helpers/shared.js';
import { leaks, writeManifest } from '../helpers/hostile.js';
import { AuthConfigError, keyMatches, loadKeyDigests } from '../../src/plugins/auth.js';

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const KEY_A = 'k-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
const KEY_B = 'k-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB';

function keysFile(dir: string, text: string): string {
  const path = join(dir, `keys-${Math.random().toString(16).slice(2)}.txt`);
  writeFileSync(path, text);
  return path;
}

t.test('the keys file: comments and blanks skipped, short keys and empty files refused, keys never in errors', async (t) => {
  const dir = t.testdir();
  const digests = await loadKeyDigests(keysFile(dir, `# ops keys\n\n  ${KEY_A}  \r\n${KEY_B}\n`));
  t.equal(digests.length, 2);
  t.ok(keyMatches(KEY_A, digests));
  t.ok(keyMatches(KEY_B, digests));
  t.notOk(keyMatches(`${KEY_A}x`, digests));
  t.notOk(keyMatches(undefined, digests));
  t.notOk(keyMatches('', digests));
  await t.rejects(loadKeyDigests(keysFile(dir, '# nothing\n')), AuthConfigError);
  await t.rejects(loadKeyDigests(keysFile(dir, 'short-secret\n')), { message: /line 1: a key needs at least 16/ });
  await t.rejects(loadKeyDigests(join(dir, 'missing.txt')), { message: /cannot read the API keys file .*ENOENT/ });
  try {
    await loadKeyDigests(keysFile(dir, `${KEY_A}\nshort-secret\n`));
  } catch (err) {
    t.notMatch((err as Error).message, /short-secret|k-AAAA/, 'the error names the line, never a key');
  }
});

t.test('with a keys file', sharedTestOptions(MOBILENET, 'images/cat_chelsea.png'), async (t) => {
  const dir = t.testdir();
  const manifest = writeManifest(dir, ['mobilenetv2']);
  const photo = readFileSync(imagePath('cat_chelsea.png'));
  const { app, logs } = await buildTestApp(t, {
    manifestPath: manifest,
    config: { authKeysFile: keysFile(dir, `${KEY_A}\n${KEY_B}\n`), logLevel: 'trace' },
  });
  const predict = (headers: Record<string, string>) =>
    app.inject({ method: 'POST', url: '/v1/models/mobilenetv2/predict', payload: photo, headers: { 'content-type': 'image/png', ...headers } });

  t.test('prediction and model routes need a key; a missing and a wrong key look alike', async (t) => {
    const none = await predict({});
    const wrong = await predict({ authorization: `Bearer ${KEY_A.slice(0, -1)}Z` });
    for (const [what, res] of [['no key', none], ['a wrong key', wrong]] as const) {
      t.equal(res.statusCode, 401, `${what}: 401`);
      t.same(res.json(), { code: 'UNAUTHORIZED', message: 'a valid API key is required' }, `${what}: UNAUTHORIZED`);
      t.equal(res.headers['www-authenticate'], 'Bearer realm="ocular"');
    }
    t.equal(none.body, wrong.body, 'the same body either way');
    for (const url of ['/v1/models', '/v1/models/mobilenetv2', '/openapi.json', '/no/such/route']) {
      t.equal((await app.inject({ method: 'GET', url })).statusCode, 401, `GET ${url} without a key: 401`);
    }
    t.equal((await predict({ authorization: 'Basic Zm9vOmJhcg==' })).statusCode, 401, 'another scheme: 401');
    t.equal((await predict({ authorization: 'Bearer' })).statusCode, 401, 'Bearer without a token: 401');
  });

  t.test('Bearer and X-API-Key both work, with any listed key', async (t) => {
    t.equal((await predict({ authorization: `Bearer ${KEY_A}` })).statusCode, 200, 'Bearer key A');
    t.equal((await predict({ authorization: `bearer ${KEY_B}` })).statusCode, 200, 'bearer key B (scheme case-insensitive)');
    t.equal((await predict({ 'x-api-key': KEY_B })).statusCode, 200, 'X-API-Key key B');
    t.equal((await app.inject({ method: 'GET', url: '/v1/models', headers: { 'x-api-key': KEY_A } })).statusCode, 200, 'model list with a key');
    t.equal((await app.inject({ method: 'GET', url: '/no/such/route', headers: { 'x-api-key': KEY_A } })).statusCode, 404, 'with a key, unknown routes are 404');
  });

  t.test('probes and metrics stay open by default', async (t) => {
    t.equal((await app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
    t.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 200);
  });

  t.test('the OpenAPI document lists the 401', async (t) => {
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json', headers: { 'x-api-key': KEY_A } })).json() as {
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
    };
    t.ok(doc.paths['/v1/models/{name}/predict']?.['post']?.responses['401'], 'predict documents 401');
  });

  t.test('no key, right or wrong, reaches the log', async (t) => {
    await predict({ authorization: `Bearer ${KEY_A}` });
    await predict({ 'x-api-key': `${KEY_B}-wrong` });
    const text = logs.lines.map((l) => JSON.stringify(l)).join('\n');
    t.ok(logs.lines.length > 0, `${logs.lines.length} log lines at trace level`);
    t.notMatch(text, /k-AAAA|k-BBBB/, 'no key in any log line');
  });
});

t.test('probes and metrics can be put behind the key', sharedTestOptions(MOBILENET), async (t) => {
  const dir = t.testdir();
  const { app } = await buildTestApp(t, {
    manifestPath: writeManifest(dir, ['mobilenetv2']),
    config: { authKeysFile: keysFile(dir, `${KEY_A}\n`), authProbes: true, authMetrics: true },
  });
  for (const url of ['/healthz', '/readyz', '/metrics']) {
    t.equal((await app.inject({ method: 'GET', url })).statusCode, 401, `${url} without a key: 401`);
    t.equal((await app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${KEY_A}` } })).statusCode, 200, `${url} with a key: 200`);
  }
});

t.test('without a keys file, headers, request ids and answers', sharedTestOptions(MOBILENET), async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeManifest(t.testdir(), ['mobilenetv2']) });
  t.test('security headers on every answer', async (t) => {
    for (const url of ['/healthz', '/readyz', '/v1/models', '/metrics', '/nope']) {
      const res = await app.inject({ method: 'GET', url });
      t.equal(res.headers['x-content-type-options'], 'nosniff', `${url}: nosniff`);
      t.equal(res.headers['x-frame-options'], 'DENY', `${url}: DENY`);
      t.equal(res.headers['referrer-policy'], 'no-referrer', `${url}: no-referrer`);
      t.match(String(res.headers['content-security-policy']), /default-src 'none'/, `${url}: CSP`);
      t.notOk(res.headers['x-powered-by'], `${url}: no x-powered-by`);
      t.notOk(res.headers['server'], `${url}: no server header`);
    }
  });

  t.test('client request ids are kept only when safe', async (t) => {
    const cases: [string, boolean][] = [
      ['abc-123._:XYZ', true],
      ['a'.repeat(128), true],
      ['a'.repeat(129), false],
      ['<script>alert(1)</script>', false],
      ['id with spaces', false],
      ['id\u00e9', false],
      ['"quoted"', false],
    ];
    for (const [id, kept] of cases) {
      const res = await app.inject({ method: 'GET', url: '/healthz', headers: { 'x-request-id': id } });
      const back = String(res.headers['x-request-id']);
      if (kept) t.equal(back, id, `kept: ${id.slice(0, 30)}`);
      else {
        t.not(back, id, `replaced: ${id.slice(0, 30)}`);
        t.match(back, /^[0-9a-f-]{36}$/, 'by a generated UUID');
      }
    }
  });

  t.test('5xx and framework errors answer the catalog, with nothing internal', async (t) => {
    for (const url of ['/v1/models/%E0%A4%A', `/v1/models/${'x'.repeat(200)}`, '/v1/models/x?%zz=1']) {
      const res = await app.inject({ method: 'GET', url });
      t.ok(res.statusCode >= 400 && res.statusCode < 500, `${url.slice(0, 40)}: ${res.statusCode}`);
      const body = res.json() as Record<string, unknown>;
      t.same(Object.keys(body).sort(), ['code', 'message'], 'only code and message');
      t.same(leaks(res.body), []);
      t.notMatch(res.body, /FST_/, 'no Fastify codes');
    }
  });
});

/**
 * Whether `text` can open an outbound HTTP connection: fetch, undici, require('http(s)'), a `.request(` call, or an
 * import from node:http(s) of anything but the server side (createServer and types: a listener accepts, it does
 * not connect). A namespace or default import of node:http(s) counts as a client.
 */
function usesHttpClient(text: string): boolean {
  if (/\bfetch\(|from 'undici'|require\('https?'\)|\.request\(/.test(text)) return true;
  const SERVER_SIDE = new Set(['createServer', 'Server', 'ServerOptions', 'IncomingMessage', 'ServerResponse']);
  for (const m of text.matchAll(/import\s+(type\s+)?([^;]*?)\s+from 'node:https?'/g)) {
    if (m[1] !== undefined) continue;
    const names = /^\{([^}]*)\}$/.exec((m[2] ?? '').trim())?.[1];
    if (names === undefined) return true;
    const imported = names.split(',').map((n) => n.trim().replace(/^type\s+/, '').split(/\s+as\s+/)[0] ?? '').filter((n) => n !== '');
    if (!imported.every((n) => SERVER_SIDE.has(n))) return true;
  }
  return false;
}

t.test('the HTTP client check tells a client import from a server one', async (t) => {
  t.ok(usesHttpClient("import { request } from 'node:http';"), 'request');
  t.ok(usesHttpClient("import { get as g } from 'node:https';"), 'get, renamed');
  t.ok(usesHttpClient("import { createServer, Agent } from 'node:http';"), 'an Agent beside a server');
  t.ok(usesHttpClient("import http from 'node:http';"), 'a default import');
  t.ok(usesHttpClient("import * as http from 'node:http';"), 'a namespace import');
  t.ok(usesHttpClient('await fetch(url);'), 'fetch');
  t.notOk(usesHttpClient("import { type IncomingMessage, createServer } from 'node:http';"), 'a listener');
  t.notOk(usesHttpClient("import type { Agent } from 'node:http';"), 'types only');
});

t.test('no route fetches a URL a client supplies: no HTTP client outside model sources', async (t) => {
  const offenders: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts')) {
        const text = readFileSync(path, 'utf8');
        const rel = path.slice(projectRoot.length + 1);
        if (rel === join('src', 'core', 'source.ts')) continue;
        if (usesHttpClient(text)) offenders.push(rel);
      }
    }
  };
  walk(join(projectRoot, 'src'));
  t.same(offenders, [], 'only src/core/source.ts (model sources at startup, from the manifest) opens outbound connections');
  const source = readFileSync(join(projectRoot, 'src', 'core', 'source.ts'), 'utf8');
  t.match(source, /startsWith\('https:\/\/'\)/, 'model sources are https only');
});
