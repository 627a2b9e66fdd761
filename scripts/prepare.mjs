/**
 * npm's `prepare` (run by `npm ci` and `npm install` in a clone of the repository). Plain JavaScript, because it
 * runs where TypeScript may not be installed.
 *
 * - Dev dependencies installed (TypeScript is there): builds dist/ (`tsc -p tsconfig.build.json`, as `npm run
 *   build`).
 * - A production install (`npm ci --omit=dev`: no TypeScript): nothing to build; it uses the dist/ built
 *   beforehand and says so, or, where there is none, says how to get one. The install itself succeeds either way:
 *   the dependencies are in place.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
let tsc;
try {
  tsc = require.resolve('typescript/bin/tsc');
} catch {
  tsc = undefined;
}

if (tsc !== undefined) {
  const built = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
  process.exit(built.status ?? 1);
}
if (existsSync('dist/src/main.js')) {
  console.log('prepare: TypeScript is not installed (a production install): the server runs from the dist/ built beforehand');
} else {
  console.warn(
    'prepare: TypeScript is not installed (a production install) and dist/ is not built: `npm start` needs dist/. ' +
      'Build it where dev dependencies are installed (`npm ci && npm run build`) and copy dist/ here, or use the container image (docker/Dockerfile).',
  );
}
