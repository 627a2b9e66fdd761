/**
 * The first minute, as a person sees it (issue #23): the CLI's help, version and unknown flags; a manifest error
 * printed once without a stack; readable log lines at a terminal; one ready line with the URL and each model's
 * name, task and provider; one GPU-fallback warning per process, naming the remedy.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { OCULAR_VERSION, helpText, parseConfig, ConfigError } from '../../src/config/config.js';
import { formatLogLine, listenUrl, readyMessage } from '../../src/core/log-format.js';
import { GPU_FALLBACK_MESSAGE } from '../../src/core/stage-loader.js';
import { buildTestApp } from '../helpers/app.js';
import { freePort, startServer } from '../helpers/server.js';
import { projectRoot } from '../helpers/shared.js';
import { writeTinyManifest } from '../v2/helpers.js';

t.setTimeout(240_000);

const run = promisify(execFile);
/** Runs src/main.ts with `args`; resolves with its exit code and output (never rejects). */
async function main(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
      cwd: projectRoot,
      env: { PATH: process.env['PATH'] ?? '', OCULAR_GRPC_PORT: 'off', ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

t.test('OCULAR_VERSION is package.json\'s version', async (t) => {
  const pkg = JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as { version: string };
  t.equal(OCULAR_VERSION, pkg.version);
});

t.test('--help is grouped, with examples, within 100 columns', async (t) => {
  const text = helpText();
  const long = text.split('\n').filter((l) => l.length > 100);
  t.same(long, [], 'no line over 100 columns');
  const sections = ['Examples:', 'Server:', 'Models:', 'Limits:', 'Security:', 'GPU, CPU and threads:', 'Observability:'];
  const at = sections.map((s) => text.split('\n').indexOf(s));
  t.ok(at.every((i) => i > 0), `every section heading is there (${at.join(', ')})`);
  t.same([...at].sort((a, b) => a - b), at, 'in order');
  t.match(text, /\n {2}--port, PORT {2}\(default: 8080\)\n {6}TCP port/, 'an option: flag, variable and default, its meaning below');
});

t.test('-h, --help and --version; an unknown flag is one line with the closest flag', async (t) => {
  t.equal(parseConfig({}, ['-h']).help, true);
  t.equal(parseConfig({}, ['--version']).version, true);
  const unknown = (argv: string[]): string => {
    try {
      parseConfig({}, argv);
    } catch (err) {
      if (err instanceof ConfigError) return err.problems.join('\n');
    }
    return 'no error';
  };
  t.equal(unknown(['--prot', '9000']), 'unknown option --prot: did you mean --port?');
  t.equal(unknown(['--body-limit=5']), 'unknown option --body-limit=5: did you mean --body-limit-bytes?');
  t.equal(unknown(['--frobnicate']), 'unknown option --frobnicate');

  const [version, help, bad] = await Promise.all([main(['--version']), main(['-h']), main(['--prot', '9000'])]);
  t.equal(version.stdout, `${OCULAR_VERSION}\n`, '--version prints the version');
  t.equal(version.code, 0);
  t.equal(help.stdout, helpText(), '-h prints the help');
  t.equal(bad.code, 2, 'an unknown flag exits 2');
  t.equal(bad.stdout, '');
  t.equal(
    bad.stderr,
    'ocular: invalid configuration:\n  unknown option --prot: did you mean --port?\nRun with --help to see every option.\n',
    'one problem line and where to look, not the whole help',
  );
});

t.test('a bad manifest is printed once, without a stack trace', async (t) => {
  const dir = t.testdir({ 'bad.manifest.json': JSON.stringify({ models: [{ name: 'x', task: 'image-classification' }] }) });
  const res = await main([], { OCULAR_MANIFEST: join(dir, 'bad.manifest.json'), PORT: '0' });
  t.equal(res.code, 1);
  const lines = res.stdout.split('\n').filter((l) => l.trim() !== '');
  const fatal = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['level'] === 60);
  t.equal(fatal.length, 1, 'one fatal line');
  const text = JSON.stringify(fatal[0]);
  t.match(text, /bad\.manifest\.json/, 'it names the manifest');
  t.notMatch(text, /"stack"|\\n\s+at /, 'no stack trace');
  const reason = String(fatal[0]?.['reason']);
  t.equal(text.split(reason.slice(0, 40)).length - 1, 1, 'its message appears once');
});

t.test('readable lines at a terminal', async (t) => {
  const time = '2026-12-02T10:04:05.123Z';
  t.equal(
    formatLogLine(JSON.stringify({ level: 40, time, pid: 1, hostname: 'h', service: 'ocular', msg: 'slow', model: 'ocr', ms: 12.5, note: 'two words' })),
    '10:04:05 WARN  slow model=ocr ms=12.5 note="two words"',
  );
  t.equal(
    formatLogLine(JSON.stringify({ level: 30, time, msg: 'request completed', req: { method: 'POST', url: '/v1/models/ocr/predict' }, res: { statusCode: 200 } })),
    '10:04:05 INFO  request completed POST /v1/models/ocr/predict status=200',
  );
  const err = { message: 'boom', stack: 'Error: boom\n    at f (x.js:1:1)' };
  t.equal(formatLogLine(JSON.stringify({ level: 50, time, msg: 'request failed', err })), '10:04:05 ERROR request failed err=boom\n    at f (x.js:1:1)');
  t.equal(formatLogLine(JSON.stringify({ level: 40, time, msg: 'refused', err })), '10:04:05 WARN  refused err=boom', 'a stack only for errors');
  t.equal(formatLogLine('not json'), 'not json');
  const models = [
    { name: 'ocr', task: 'ocr', provider: 'cpu' },
    { name: 'mobilenetv2', task: 'image-classification', provider: 'cuda' },
  ];
  t.equal(
    formatLogLine(JSON.stringify({ level: 30, time, msg: 'ready', url: 'http://localhost:8080', models })),
    '10:04:05 INFO  ready at http://localhost:8080, serving ocr (ocr, cpu), mobilenetv2 (image-classification, cuda)',
  );
  t.equal(readyMessage('http://x:1', []), 'ready at http://x:1, serving no model');
  t.equal(listenUrl('0.0.0.0', 8080), 'http://localhost:8080');
  t.equal(listenUrl('::', 80), 'http://localhost:80');
  t.equal(listenUrl('10.0.0.2', 9000), 'http://10.0.0.2:9000');
  t.equal(listenUrl('fe80::1', 9000), 'http://[fe80::1]:9000');
});

t.test('the ready line names the URL and each model with its task and provider', async (t) => {
  const manifest = writeTinyManifest(t.testdir());
  const port = await freePort();
  const server = startServer({ OCULAR_MANIFEST: manifest, PORT: String(port), HOST: '127.0.0.1', OCULAR_DEVICE: 'cpu' });
  t.teardown(server.kill);
  const ready = await server.waitFor((l) => l['msg'] === 'ready', 'ready');
  t.equal(ready['url'], `http://127.0.0.1:${port}`);
  t.same(ready['models'], [
    { name: 'mymodel', task: 'tensor', provider: 'cpu' },
    { name: 'add', task: 'tensor', provider: 'cpu' },
  ]);
});

t.test('a GPU fallback is warned about once per process, with the remedy', async (t) => {
  const { app, logs } = await buildTestApp(t, { manifestPath: writeTinyManifest(t.testdir()), config: { device: 'auto', logLevel: 'debug' } });
  const providers = app.ocular.models.list().map((m) => m.describe().provider);
  if (providers.some((p) => p !== 'cpu')) {
    t.comment(`a GPU provider works here (${providers.join(', ')}): no fallback to observe`);
    return;
  }
  const warnings = logs.lines.filter((l) => l['level'] === 40 && l['msg'] === GPU_FALLBACK_MESSAGE);
  t.equal(warnings.length, 1, 'one warning for two models that fell back');
  t.match(GPU_FALLBACK_MESSAGE, /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install\.js.*runtime-gpu.*OCULAR_DEVICE=cpu/, 'it names the three ways out');
  const debug = logs.lines.filter((l) => l['level'] === 20 && l['msg'] === 'GPU execution provider unavailable, running on CPU');
  t.equal(debug.length, 1, 'the second model\'s fallback is a debug line');
});
