/**
 * npm's `prepare` (scripts/prepare.mjs) in a production install: where TypeScript is not installed it builds
 * nothing and the install goes on, using a dist/ built beforehand or saying how to get one. The script is copied
 * into a folder with no node_modules, which is what `npm ci --omit=dev` leaves it (TypeScript is a dev dependency).
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { projectRoot } from '../helpers/shared.js';

const run = (cwd: string): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    execFile(process.execPath, [join(cwd, 'scripts', 'prepare.mjs')], { cwd }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), stdout, stderr }),
    );
  });

t.test('without TypeScript, prepare uses the dist/ there, or says how to get one, and never fails the install', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-prepare-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'scripts'));
  await copyFile(join(projectRoot, 'scripts', 'prepare.mjs'), join(dir, 'scripts', 'prepare.mjs'));

  const bare = await run(dir);
  t.equal(bare.code, 0, 'no dist/: the install still succeeds');
  t.match(bare.stderr, /dist\/ is not built: `npm start` needs dist\/\. Build it where dev dependencies are installed \(`npm ci && npm run build`\)/);

  await mkdir(join(dir, 'dist', 'src'), { recursive: true });
  await writeFile(join(dir, 'dist', 'src', 'main.js'), '');
  const built = await run(dir);
  t.equal(built.code, 0);
  t.match(built.stdout, /TypeScript is not installed \(a production install\): the server runs from the dist\/ built beforehand/);
  t.equal(built.stderr, '');
});
