import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import semver from 'semver';
import t from 'tap';
import { readYaml, repoPath } from './server-facts.js';

/**
 * A quiet `npm ci`: no warning about the project's own npm configuration, and onnxruntime-node's CUDA download
 * skipped (README, "Requirements"). npm 11 reads `allowScripts` in package.json: a dependency whose install script
 * is not listed runs it with a warning, one listed false is skipped silently. npm 10 does not read it, so CI also
 * sets ONNXRUNTIME_NODE_INSTALL=skip, the variable onnxruntime-node's install script reads itself. A key in
 * `.npmrc` that npm does not define (the old `onnxruntime-node-install=skip`) is a warning on every npm command.
 */

interface Lock {
  packages: Record<string, { hasInstallScript?: boolean; dev?: boolean; optional?: boolean; engines?: { node?: string } | string[] }>;
}
const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { allowScripts?: Record<string, boolean>; engines: { node: string } };
const lock = JSON.parse(readFileSync(repoPath('package-lock.json'), 'utf8')) as Lock;

/** The package name of a lockfile key (`node_modules/a/node_modules/@s/b` -> `@s/b`). */
const nameOf = (key: string): string => key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);

t.test('every dependency with an install script is allowed or denied in allowScripts', async (t) => {
  const policy = pkg.allowScripts ?? {};
  const scripted = Object.entries(lock.packages)
    .filter(([key, p]) => key !== '' && p.hasInstallScript === true)
    .map(([key]) => nameOf(key));
  t.ok(scripted.length > 0, `the lockfile lists install scripts (${scripted.join(', ')})`);
  const uncovered = scripted.filter((name) => typeof policy[name] !== 'boolean');
  t.same(uncovered, [], 'none is left for npm to warn about');
  t.equal(policy['onnxruntime-node'], false, "onnxruntime-node's install script (the CUDA download) does not run");
  const stale = Object.keys(policy).filter((name) => !scripted.includes(name));
  t.same(stale, [], 'every allowScripts entry names a dependency that has an install script');
});

t.test('.npmrc sets no key npm does not know', async (t) => {
  const path = repoPath('.npmrc');
  if (!existsSync(path)) {
    t.pass('no .npmrc');
    return;
  }
  const keys = readFileSync(path, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith(';'))
    .map((l) => l.split('=')[0]?.trim() ?? '')
    // Registry-scoped keys (`//host/:_authToken`, `@scope:registry`) are npm's own.
    .filter((k) => !k.startsWith('//') && !k.includes(':'));
  const known = Object.keys(JSON.parse(execFileSync('npm', ['config', 'ls', '-l', '--json'], { encoding: 'utf8' })) as object);
  t.same(keys.filter((k) => !known.includes(k)), [], 'every key is one of npm config ls -l');
});

t.test("CI's installs skip the CUDA download under any npm", async (t) => {
  const ci = readYaml<{ jobs: Record<string, { steps: { run?: string; env?: Record<string, string> }[] }> }>(
    readFileSync(repoPath('.github', 'workflows', 'ci.yml'), 'utf8'),
  );
  const installs = Object.values(ci.jobs).flatMap((j) => j.steps.filter((s) => /\bnpm ci\b/.test(s.run ?? '')));
  t.ok(installs.length > 0, 'ci.yml installs');
  for (const step of installs) t.equal(step.env?.['ONNXRUNTIME_NODE_INSTALL'], 'skip', `${step.run ?? ''}: ONNXRUNTIME_NODE_INSTALL=skip`);
});

/**
 * No EBADENGINE warning on `npm ci` (issue #23): npm warns for each installed package whose `engines.node` the running
 * Node does not satisfy. Checked here for every package of the lockfile against the running Node and against the
 * oldest Node the project's own `engines` admits, so that a dependency bump needing a newer Node fails here, not as a
 * warning on a user's install. (light-my-request is held at 6.6.0 by `overrides`: 6.8 pulls cookie 2, which needs
 * Node 22, for a feature of `inject` that fastify does not use.)
 */
t.test('every locked package supports the Node versions the project admits', async (t) => {
  // The oldest release of each line the project's engines admit (`^20.19.0 || ^22.13.0 || >=24`: 20.19.0, 22.13.0, 24.0.0).
  const oldest = pkg.engines.node.split('||').map((r) => semver.minVersion(r.trim())?.version ?? `none in ${r}`);
  const ranges = Object.entries(lock.packages)
    .filter(([key, p]) => key !== '' && p.optional !== true && !Array.isArray(p.engines) && typeof p.engines?.node === 'string')
    .map(([key, p]) => ({ name: nameOf(key), range: (p.engines as { node: string }).node }));
  t.ok(ranges.length > 50, `${ranges.length} locked packages declare engines.node`);
  for (const node of [process.version, ...oldest]) {
    t.ok(semver.satisfies(node, pkg.engines.node), `Node ${node} is admitted by the project's engines`);
    const refused = ranges.filter((r) => !semver.satisfies(node, r.range, { includePrerelease: true }));
    t.same(refused.map((r) => `${r.name} (${r.range})`), [], `every locked package admits Node ${node}`);
  }
});
