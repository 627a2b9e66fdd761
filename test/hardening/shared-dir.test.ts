/**
 * The hardening tests' manifests (test/helpers/hostile.ts writeManifest) with OCULAR_SHARED_DIR an absolute path
 * other than ../shared, as .ci/run and the README set it: every model and labels path must name an existing file
 * under that folder. The helpers read the variable when they load, so a child process writes the manifest.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { projectRoot, sharedDir, sharedTestOptions } from '../helpers/shared.js';

t.setTimeout(60_000);
const run = promisify(execFile);
const MODELS = ['mobilenetv2', 'yolox-nano', 'ocr'];

t.test('with an absolute OCULAR_SHARED_DIR elsewhere, the hardening manifests name existing files under it', sharedTestOptions('models'), async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-shared-dir-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Another absolute path to the same shared folder: the helpers then use a copy of the manifest with absolute paths.
  const elsewhere = join(dir, 'shared');
  await symlink(sharedDir, elsewhere);
  const fixture = JSON.parse(await readFile(join(projectRoot, 'test', 'fixtures', 'shared.manifest.json'), 'utf8')) as { models: { name: string }[] };
  const names = MODELS.filter((m) => fixture.models.some((x) => x.name === m));
  t.ok(names.length > 0, `models of the shared manifest: ${names.join(', ')}`);

  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (k !== 'NODE_OPTIONS' && !k.startsWith('TAP')) env[k] = v;
  const { stdout } = await run(process.execPath, ['--import=tsx', join(projectRoot, 'test', 'fixtures', 'hostile-manifest-child.ts')], {
    cwd: projectRoot,
    env: { ...env, OCULAR_SHARED_DIR: elsewhere, HOSTILE_MODELS: JSON.stringify(names) },
  });
  const manifest = JSON.parse(await readFile(stdout.trim(), 'utf8')) as { models: Record<string, unknown>[] };
  const paths: string[] = [];
  const collect = (o: unknown) => {
    if (typeof o !== 'object' || o === null) return;
    for (const [k, v] of Object.entries(o)) {
      if ((k === 'source' || k === 'labels') && typeof v === 'string') paths.push(v);
      else collect(v);
    }
  };
  collect(manifest.models);
  t.ok(paths.length >= names.length * 2, `${paths.length} model and labels paths`);
  for (const p of paths) {
    t.ok(isAbsolute(p) && p.startsWith(`${elsewhere}/`), `${p} is under OCULAR_SHARED_DIR`);
    t.ok(existsSync(p), `${p} exists`);
  }
});
