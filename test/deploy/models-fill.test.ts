/**
 * k8s/components/models-fill/fill.mjs, the Job that fills a models volume, run as the Job runs it (node, the
 * environment variables, a list file) against a local HTTP server: files land only after their sha256 matched,
 * a second run keeps what is there, a wrong digest or a failed download leaves nothing behind and fails the Job,
 * and a hostile list (paths leaving the volume, http:// without consent, URLs without a digest) is refused.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { repoPath } from './server-facts.js';

t.setTimeout(60_000);

const SCRIPT = repoPath('k8s', 'components', 'models-fill', 'fill.mjs');
const model = Buffer.from('not really an onnx model, but bytes with a digest');
const labels = Buffer.from('cat\ndog\n');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Run {
  code: number;
  lines: { path?: string; result: string; error?: string }[];
}

/** Runs the script (or `script`, a link to it) with a list and a volume folder; its JSON lines and exit status. */
function runFill(list: unknown, dir: string, env: Record<string, string> = {}, script = SCRIPT): Promise<Run> {
  const listFile = join(dir, '..', `list-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(listFile, typeof list === 'string' ? list : JSON.stringify(list));
  return new Promise((resolve) => {
    execFile(process.execPath, [script], { env: { PATH: process.env['PATH'] ?? '', FILL_LIST: listFile, FILL_DIR: dir, ...env }, timeout: 30_000 }, (err, stdout) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, lines: stdout.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Run['lines'][number]) });
    });
  });
}

let server: Server;
let base = '';
let requests: string[] = [];
t.before(async () => {
  server = createServer((req, res) => {
    requests.push(req.url ?? '');
    if (req.url === '/model.onnx') return res.end(model);
    if (req.url === '/labels.txt') return res.end(labels);
    if (req.url === '/moved') return res.writeHead(302, { location: '/labels.txt' }).end();
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
t.teardown(() => server.close());

function volume(t: { teardown(fn: () => void): void }): string {
  const root = mkdtempSync(join(tmpdir(), 'ocular-fill-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  return join(root, 'models');
}

t.test('downloads, verifies and places every file; a second run keeps them', async (t) => {
  const dir = volume(t);
  const manifest = join(dir, '..', 'manifest.json');
  writeFileSync(manifest, '{"models":[]}');
  const list = {
    files: [
      { path: 'm/model.onnx', url: `${base}/model.onnx`, sha256: sha(model) },
      { path: 'm/labels.txt', url: `${base}/moved`, sha256: sha(labels) },
      { path: 'm/models.manifest.json', from: manifest },
    ],
  };
  requests = [];
  const first = await runFill(list, dir, { FILL_ALLOW_HTTP: '1' });
  t.equal(first.code, 0, 'exit 0');
  t.same(first.lines.map((l) => l.result), ['written', 'written', 'written'], 'three files written');
  t.same(readFileSync(join(dir, 'm', 'model.onnx')), model, 'the model is the served bytes');
  t.same(readFileSync(join(dir, 'm', 'labels.txt')), labels, 'a redirect is followed');
  t.equal(readFileSync(join(dir, 'm', 'models.manifest.json'), 'utf8'), '{"models":[]}', 'a mounted file is copied');
  t.same(readdirSync(join(dir, 'm')).sort(), ['labels.txt', 'model.onnx', 'models.manifest.json'], 'no partial files left');

  requests = [];
  const second = await runFill(list, dir, { FILL_ALLOW_HTTP: '1' });
  t.equal(second.code, 0, 'a second run: exit 0');
  t.same(second.lines.slice(0, 2).map((l) => l.result), ['present', 'present'], 'files with the right sha256 are kept');
  t.same(requests, [], 'without downloading them again');
});

t.test('run through a symlink, as a ConfigMap mounts it, the script still runs', async (t) => {
  const dir = volume(t);
  // A ConfigMap volume: <mount>/fill.mjs -> ..data/fill.mjs -> ..<timestamp>/fill.mjs.
  const mount = join(dir, '..', 'etc-ocular-fill');
  mkdirSync(join(mount, '..2026_01_01'), { recursive: true });
  copyFileSync(SCRIPT, join(mount, '..2026_01_01', 'fill.mjs'));
  symlinkSync('..2026_01_01', join(mount, '..data'));
  symlinkSync('..data/fill.mjs', join(mount, 'fill.mjs'));
  const run = await runFill({ files: [{ path: 'labels.txt', url: `${base}/labels.txt`, sha256: sha(labels) }] }, dir, { FILL_ALLOW_HTTP: '1' }, join(mount, 'fill.mjs'));
  t.equal(run.code, 0, 'exit 0');
  t.same(run.lines.map((l) => l.result), ['written'], 'the file is written');
});

t.test('a wrong digest, a failed download: nothing placed, the others still tried, exit 1', async (t) => {
  const dir = volume(t);
  const run = await runFill(
    {
      files: [
        { path: 'bad.onnx', url: `${base}/model.onnx`, sha256: sha(labels) },
        { path: 'gone.onnx', url: `${base}/gone`, sha256: sha(model) },
        { path: 'good.txt', url: `${base}/labels.txt`, sha256: sha(labels) },
      ],
    },
    dir,
    { FILL_ALLOW_HTTP: '1' },
  );
  t.equal(run.code, 1, 'exit 1');
  t.match(run.lines[0], { path: 'bad.onnx', result: 'failed', error: /sha256 mismatch/ }, 'the mismatch is named');
  t.match(run.lines[1], { path: 'gone.onnx', result: 'failed', error: /HTTP 404/ }, 'the HTTP status is named');
  t.match(run.lines[2], { path: 'good.txt', result: 'written' }, 'the good file is still written');
  t.same(readdirSync(dir).sort(), ['good.txt'], 'neither the mismatched bytes nor a partial file remain');

  // A file already there with other bytes is replaced only by verified ones.
  writeFileSync(join(dir, 'good.txt'), 'tampered');
  const again = await runFill({ files: [{ path: 'good.txt', url: `${base}/model.onnx`, sha256: sha(labels) }] }, dir, { FILL_ALLOW_HTTP: '1' });
  t.equal(again.code, 1, 'exit 1');
  t.equal(readFileSync(join(dir, 'good.txt'), 'utf8'), 'tampered', 'a failed download leaves the existing file alone');
});

t.test('a hostile or malformed list is refused before anything is fetched', async (t) => {
  const dir = volume(t);
  const cases: [string, unknown, RegExp][] = [
    ['a path leaving the volume', { files: [{ path: '../escape.onnx', url: `${base}/model.onnx`, sha256: sha(model) }] }, /relative path inside/],
    ['an absolute path', { files: [{ path: '/etc/passwd', url: `${base}/model.onnx`, sha256: sha(model) }] }, /relative path inside/],
    ['a URL without its digest', { files: [{ path: 'x.onnx', url: `${base}/model.onnx` }] }, /needs its sha256/],
    ['a malformed digest', { files: [{ path: 'x.onnx', url: `${base}/model.onnx`, sha256: 'ABC' }] }, /64 lowercase hex/],
    ['a file listed twice', { files: [{ path: 'x', from: '/a' }, { path: './x', from: '/b' }] }, /listed twice/],
    ['both url and from', { files: [{ path: 'x', from: '/a', url: `${base}/model.onnx`, sha256: sha(model) }] }, /exactly one of url and from/],
    ['an unknown field', { files: [{ path: 'x', from: '/a', sha: 'x' }] }, /unknown field sha/],
    ['a file:// URL', { files: [{ path: 'x', url: 'file:///etc/passwd', sha256: sha(model) }] }, /http\(s\)/],
    ['no files', { files: [] }, /no "files"/],
    ['not JSON', '{"files": [', /bad list/],
  ];
  requests = [];
  for (const [name, list, expected] of cases) {
    const run = await runFill(list, dir, { FILL_ALLOW_HTTP: '1' });
    t.equal(run.code, 1, `${name}: exit 1`);
    t.match(run.lines[0]?.error ?? '', expected, `${name}: refused with its reason`);
  }
  t.same(requests, [], 'nothing was fetched');
  t.notOk(existsSync(dir) && readdirSync(dir).length > 0, 'nothing was written');

  const http = await runFill({ files: [{ path: 'x.onnx', url: `${base}/model.onnx`, sha256: sha(model) }] }, dir);
  t.match(http.lines[0], { result: 'failed', error: /http:\/\/ refused/ }, 'http:// without FILL_ALLOW_HTTP=1 is refused');
});
