/**
 * How the playground's files are served (no browser, no models loaded): content types, the page's own strict
 * Content-Security-Policy, caching, OCULAR_PLAYGROUND=false, auth, and a page that needs no inline script or style.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { PLAYGROUND_CSP, findPublicDir } from '../../src/routes/playground.js';
import { buildTestApp } from '../helpers/app.js';
import { projectRoot } from '../helpers/shared.js';

const FILES: [string, RegExp][] = [
  ['/', /^text\/html; charset=utf-8$/],
  ['/app.js', /^text\/javascript; charset=utf-8$/],
  ['/lib.js', /^text\/javascript; charset=utf-8$/],
  ['/style.css', /^text\/css; charset=utf-8$/],
  ['/favicon.svg', /^image\/svg\+xml$/],
  ['/samples/television.png', /^image\/png$/],
  ['/samples/stop-sign.png', /^image\/png$/],
  ['/samples/no-parking.png', /^image\/png$/],
];

/** A manifest whose models are never loaded here (load: false): only the routes are exercised. */
function emptyishManifest(dir: string): string {
  const path = join(dir, 'manifest.json');
  writeFileSync(
    path,
    JSON.stringify({
      models: [
        {
          name: 'm',
          task: 'image-classification',
          source: 'absent.onnx',
          labels: 'absent.txt',
          input: { width: 8, height: 8, scale: 1, mean: [0, 0, 0], std: [1, 1, 1] },
        },
      ],
    }),
  );
  return path;
}

t.test('the page, its script, its style sheet and its icon are served with their types and the strict CSP', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-pg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { app } = await buildTestApp(t, { manifestPath: emptyishManifest(dir), load: false });
  for (const [url, type] of FILES) {
    const res = await app.inject({ method: 'GET', url });
    t.equal(res.statusCode, 200, url);
    t.match(res.headers['content-type'], type, `${url} content type`);
    t.equal(res.headers['content-security-policy'], PLAYGROUND_CSP, `${url} CSP`);
    t.equal(res.headers['x-content-type-options'], 'nosniff', `${url} nosniff`);
    t.equal(res.headers['cache-control'], 'no-cache', `${url} is revalidated`);
    const etag = res.headers['etag'];
    t.type(etag, 'string', `${url} has an ETag`);
    const again = await app.inject({ method: 'GET', url, headers: { 'if-none-match': String(etag) } });
    t.equal(again.statusCode, 304, `${url}: 304 when unchanged`);
    t.equal(again.body, '');
  }
  const page = await app.inject({ method: 'GET', url: '/' });
  t.equal(page.body, readFileSync(join(projectRoot, 'public', 'index.html'), 'utf8'), 'the file as it is');
  const openapi = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<{ paths: Record<string, unknown> }>();
  t.notOk('/' in openapi.paths || '/app.js' in openapi.paths, 'the page is not part of the API document');
});

t.test('OCULAR_PLAYGROUND=false serves no page', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-pg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { app } = await buildTestApp(t, { manifestPath: emptyishManifest(dir), load: false, config: { playground: false } });
  for (const [url] of FILES) {
    const res = await app.inject({ method: 'GET', url });
    t.equal(res.statusCode, 404, url);
    t.equal(res.json<{ code: string }>().code, 'NOT_FOUND');
  }
});

t.test('with auth on, the page loads without a key and the API it calls still needs one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-pg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keysFile = join(dir, 'keys');
  writeFileSync(keysFile, 'a-key-of-at-least-16-chars\n');
  const { app } = await buildTestApp(t, { manifestPath: emptyishManifest(dir), load: false, config: { authKeysFile: keysFile } });
  for (const [url] of FILES) t.equal((await app.inject({ method: 'GET', url })).statusCode, 200, `${url} needs no key`);
  t.equal((await app.inject({ method: 'GET', url: '/v1/models' })).statusCode, 401, 'GET /v1/models needs a key');
  t.equal((await app.inject({ method: 'GET', url: '/index.html' })).statusCode, 401, 'an unknown path still needs a key');
  const withKey = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer a-key-of-at-least-16-chars' } });
  t.equal(withKey.statusCode, 200, 'the bearer token the page sends is accepted');
});

t.test('the page needs no inline script, no inline style and nothing from another origin', async (t) => {
  const dir = findPublicDir();
  t.ok(dir, 'public/ is found');
  if (dir === undefined) return;
  const html = readFileSync(join(dir, 'index.html'), 'utf8');
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
  t.equal(scripts.length, 1, 'one script');
  t.match(scripts[0]?.[1] ?? '', /type="module" src="app\.js"/, 'an external module');
  t.equal((scripts[0]?.[2] ?? '').trim(), '', 'with no inline body');
  t.notMatch(html, /<style\b/i, 'no <style> element');
  t.notMatch(html, /\sstyle\s*=/i, 'no style attribute');
  t.notMatch(html, /\son[a-z]+\s*=/i, 'no inline event handler');
  for (const file of ['index.html', 'app.js', 'lib.js', 'style.css', 'favicon.svg']) {
    const text = readFileSync(join(dir, file), 'utf8');
    const absolute = [...text.matchAll(/\b(?:https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}/gi)]
      .map((m) => m[0])
      .filter((u) => u !== 'http://www.w3.org'); // the SVG namespace, never fetched
    t.same(absolute, [], `${file} names no other origin`);
  }
  const js = readFileSync(join(dir, 'app.js'), 'utf8');
  t.notMatch(js, /\beval\(|new Function\(|innerHTML|insertAdjacentHTML|document\.write/, 'app.js builds the DOM without HTML strings');
});

t.test("the samples are the project's own drawings, small, and the OCR one is the README's example", async (t) => {
  const samples = join(projectRoot, 'public', 'samples');
  for (const file of ['television.png', 'stop-sign.png', 'no-parking.png']) {
    const bytes = readFileSync(join(samples, file));
    t.same([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${file} is a PNG`);
    t.ok(bytes.length < 16 * 1024, `${file} is small (${bytes.length} bytes)`);
  }
  t.ok(
    readFileSync(join(samples, 'no-parking.png')).equals(readFileSync(join(projectRoot, 'examples', 'sign.png'))),
    'scripts/make-examples.ts draws the same sign for both',
  );
});
