/**
 * The dependency audit (scripts/audit-check.ts, logic in scripts/lib/audit.ts): the allowlist's rules, npm
 * audit's answer read into findings, version ranges, the kept advisories against a lockfile's production
 * packages, integrity pins; and the script's exit codes end to end on saved inputs (no network: --input).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import {
  activeAllowEntries,
  findingsOf,
  inRange,
  isAllowed,
  keptAdvisoryFindings,
  productionPackages,
  unpinnedPackages,
  type KeptAdvisory,
} from '../../scripts/lib/audit.js';
import { projectRoot } from '../helpers/shared.js';

t.setTimeout(120_000);

const SHA = 'sha512-' + 'A'.repeat(86) + '==';
const LOCK = {
  lockfileVersion: 3,
  packages: {
    '': { name: 'ocular', version: '0.1.0' },
    'node_modules/fastify': { version: '5.12.8', integrity: SHA },
    'node_modules/light-my-request/node_modules/cookie': { version: '0.7.1', integrity: SHA },
    'node_modules/tap': { version: '21.8.0', integrity: SHA, dev: true },
    'node_modules/fsevents': { version: '2.3.3', integrity: SHA, devOptional: true },
    'node_modules/@img/sharp-linux-x64': { version: '0.35.5', integrity: SHA, optional: true },
  },
};
const advisory = (over: Partial<KeptAdvisory>): KeptAdvisory => ({ id: 'GHSA-aaaa-bbbb-cccc', package: 'cookie', vulnerable: '<0.7.0', severity: 'high', title: 'cookie injection', ...over });

t.test('version ranges: comparators joined by spaces and ||; an unreadable range throws', async (t) => {
  t.ok(inRange('0.6.9', '<0.7.0'));
  t.notOk(inRange('0.7.0', '<0.7.0'));
  t.ok(inRange('0.7.0', '<=0.7.0'));
  t.ok(inRange('2.1.0', '>=2.0.0 <2.3.4'));
  t.notOk(inRange('2.3.4', '>=2.0.0 <2.3.4'));
  t.ok(inRange('1.0.0', '>=2.0.0 <2.3.4 || <1.9.9'));
  t.ok(inRange('3.0.0', '3.0.0'));
  t.ok(inRange('3.0.0-beta.1', '=3.0.0'), 'prerelease tags are ignored');
  t.notOk(inRange('10.0.0', '<9.10.0'), 'numeric, not string, comparison');
  t.throws(() => inRange('1.0.0', '<1.x'), /cannot read/);
  t.throws(() => inRange('1.0.0', '<1.0.0 || '), /empty range group/);
  t.throws(() => inRange('latest', '<1.0.0'), /cannot read version/);
});

t.test('production packages: dev and devOptional entries and the root are left out; nested names are read', async (t) => {
  const names = productionPackages(LOCK).map((p) => `${p.name}@${p.version}`);
  t.same(names, ['fastify@5.12.8', 'cookie@0.7.1', '@img/sharp-linux-x64@0.35.5']);
  t.throws(() => productionPackages({ lockfileVersion: 1, dependencies: {} }), /no "packages" section/);
});

t.test('kept advisories match production packages in their range, high and critical only', async (t) => {
  const packages = productionPackages(LOCK);
  t.same(keptAdvisoryFindings(packages, [advisory({})]), [], 'cookie 0.7.1 is past the range');
  const hit = keptAdvisoryFindings(packages, [advisory({ vulnerable: '<0.7.2' })]);
  t.equal(hit.length, 1);
  t.same(hit[0]?.advisories, ['GHSA-aaaa-bbbb-cccc']);
  t.match(hit[0]?.titles[0] ?? '', /0\.7\.1 at node_modules\/light-my-request\/node_modules\/cookie/);
  t.same(keptAdvisoryFindings(packages, [advisory({ vulnerable: '<0.7.2', severity: 'moderate' })]), [], 'moderate does not fail');
  t.same(keptAdvisoryFindings(packages, [advisory({ package: 'tap', vulnerable: '<99.0.0' })]), [], 'dev packages are not production');
});

t.test('integrity: a production package without a sha512 integrity is reported', async (t) => {
  t.same(unpinnedPackages(productionPackages(LOCK)), []);
  const lock = { packages: { ...LOCK.packages, 'node_modules/odd': { version: '1.0.0', integrity: 'sha1-abc' }, 'node_modules/none': { version: '1.0.0' } } };
  t.same(unpinnedPackages(productionPackages(lock)), ['odd@1.0.0 (node_modules/odd)', 'none@1.0.0 (node_modules/none)']);
});

t.test('allowlist: exactly one of advisory or package, a reason, dates; an expired entry no longer counts', async (t) => {
  const { active, problems, expired } = activeAllowEntries(
    [
      { advisory: 'GHSA-1111-2222-3333', reason: 'not reachable: we never parse cookies', added: '2026-11-01', expires: '2027-01-01' },
      { package: 'cookie', reason: 'fixed upstream next week', added: '2026-01-01', expires: '2026-02-01' },
      { advisory: 'GHSA-x', package: 'y', reason: 'both given here', added: '2026-01-01', expires: '2027-01-01' },
      { package: 'z', reason: 'short', added: '2026-01-01', expires: '2027-01-01' },
      { package: 'w', reason: 'a long enough reason', added: 'yesterday', expires: '2027-01-01' },
    ],
    '2026-12-02',
  );
  t.same(active.map((e) => e.advisory ?? e.package), ['GHSA-1111-2222-3333']);
  t.same(problems, [
    'allowlist entry 2: give exactly one of advisory, package',
    'allowlist entry 3: a reason is required',
    'allowlist entry 4: added and expires are YYYY-MM-DD dates',
  ]);
  t.match(expired, [/entry 1 \(cookie\) expired on 2026-02-01/]);
  const finding = { package: 'cookie', severity: 'high', advisories: ['GHSA-1111-2222-3333'], titles: [] };
  t.ok(isAllowed(finding, active), 'allowed by its advisory id');
  t.notOk(isAllowed({ ...finding, advisories: ['GHSA-9999-9999-9999'] }, active), 'the expired package entry does not count');
});

t.test("npm audit's answer: high and critical findings with their GHSA ids; an endpoint error is NOT RUN", async (t) => {
  const report = {
    vulnerabilities: {
      cookie: { severity: 'high', via: [{ url: 'https://github.com/advisories/GHSA-pxg6-pf52-xh8x', title: 'cookie accepts out of bounds characters' }] },
      'light-my-request': { severity: 'high', via: ['cookie'] },
      debug: { severity: 'low', via: [{ url: 'https://github.com/advisories/GHSA-aaaa-aaaa-aaaa', title: 'x' }] },
    },
  };
  const read = findingsOf(report);
  t.ok('findings' in read);
  if ('findings' in read) {
    t.same(read.findings.map((f) => [f.package, f.advisories]), [['cookie', ['GHSA-pxg6-pf52-xh8x']], ['light-my-request', []]]);
  }
  t.same(findingsOf({ message: '405 Method Not Allowed - POST https://registry.npmjs.org/-/npm/v1/security/advisories/bulk' }), {
    notRun: '405 Method Not Allowed - POST https://registry.npmjs.org/-/npm/v1/security/advisories/bulk',
  });
  t.same(findingsOf({ statusCode: 503 }), { notRun: 'HTTP 503' });
});

t.test('the script: exit 0 clean, 1 on a finding or an unpinned package, 3 when npm audit could not run', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-audit-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = async (name: string, value: unknown) => {
    const path = join(dir, name);
    await writeFile(path, JSON.stringify(value));
    return path;
  };
  const lockfile = await file('lock.json', LOCK);
  const allowlist = await file('allow.json', { entries: [] });
  const none = await file('none.json', { advisories: [] });
  const clean = await file('clean-audit.json', { vulnerabilities: {} });
  const endpointError = await file('error-audit.json', { message: '405 Method Not Allowed' });
  const run = (args: string[]): Promise<{ code: number; out: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, ['--import=tsx', join(projectRoot, 'scripts', 'audit-check.ts'), '--lockfile', lockfile, '--allowlist', allowlist, ...args], { cwd: projectRoot }, (err, stdout) =>
        resolve({ code: err === null ? 0 : Number((err as { code?: number }).code ?? 1), out: stdout }),
      );
    });

  const ok = await run(['--input', clean, '--advisories', none]);
  t.equal(ok.code, 0, ok.out);
  t.match(ok.out, /integrity: all 3 production packages pinned by sha512/);

  const notRun = await run(['--input', endpointError, '--advisories', none]);
  t.equal(notRun.code, 3, notRun.out);
  t.match(notRun.out, /npm audit: NOT RUN: 405 Method Not Allowed/);
  t.match(notRun.out, /kept advisories \(0 in .*, 3 production packages/, 'the fallback ran and says so');

  const kept = await file('kept.json', { advisories: [advisory({ vulnerable: '<0.7.2' })] });
  const found = await run(['--input', endpointError, '--advisories', kept]);
  t.equal(found.code, 1, 'a kept advisory fails even where npm audit could not run');
  t.match(found.out, /FAIL +high cookie GHSA-aaaa-bbbb-cccc/);

  const allowing = await file('allowing.json', { entries: [{ advisory: 'GHSA-aaaa-bbbb-cccc', reason: 'only reached by a dev tool here', added: '2026-11-01', expires: '2999-01-01' }] });
  const allowed = await run(['--input', clean, '--advisories', kept, '--allowlist', allowing]);
  t.equal(allowed.code, 0, allowed.out);
  t.match(allowed.out, /allowed high cookie/);

  const unpinnedLock = await file('unpinned.json', { packages: { ...LOCK.packages, 'node_modules/none': { version: '1.0.0' } } });
  const unpinned = await run(['--input', clean, '--advisories', none, '--lockfile', unpinnedLock]);
  t.equal(unpinned.code, 1);
  t.match(unpinned.out, /not pinned by a sha512 integrity .*none@1\.0\.0/);
});
