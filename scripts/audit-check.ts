/**
 * The dependency audit of .ci/run and the GitHub workflow (`npm run audit:prod`). Two checks, each saying whether
 * it ran:
 *
 * 1. `npm audit --omit=dev --json` (production dependencies). Needs the registry's bulk advisory endpoint; where
 *    that does not answer (a mirror, or a registry answering 405 as here), it is reported NOT RUN, never passed.
 * 2. Always, offline: the advisories the repository keeps (audit-advisories.json, GHSA id, package, vulnerable
 *    range) against every production package of package-lock.json, and every such package pinned by a sha512
 *    integrity (what `npm ci` verifies each download against).
 *
 * A high or critical finding of either fails unless audit-allowlist.json lists it (GHSA id or package name) with a
 * reason, the date added and an unexpired expiry date. The logic is scripts/lib/audit.ts.
 *
 * Exit codes: 0 both checks ran and passed; 1 a finding not allowed, an unpinned package, or an invalid list;
 * 3 the kept-advisory check passed but npm audit could not run (.ci/run and the workflow warn; AUDIT_REQUIRED=1
 * makes it fail there).
 *
 * `npx tsx scripts/audit-check.ts [--input saved-npm-audit.json] [--allowlist path] [--advisories path] [--lockfile path]`
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  activeAllowEntries,
  findingsOf,
  isAllowed,
  keptAdvisoryFindings,
  productionPackages,
  unpinnedPackages,
  type AllowEntry,
  type Finding,
  type KeptAdvisory,
  type NpmAuditReport,
} from './lib/audit.js';

const { values } = parseArgs({
  options: {
    input: { type: 'string' },
    allowlist: { type: 'string', default: 'audit-allowlist.json' },
    advisories: { type: 'string', default: 'audit-advisories.json' },
    lockfile: { type: 'string', default: 'package-lock.json' },
  },
});
const say = (line: string) => process.stdout.write(`${line}\n`);

/** npm audit's JSON, or why there is none. */
function runNpmAudit(): NpmAuditReport | string {
  let text: string;
  if (values.input !== undefined) {
    text = readFileSync(values.input, 'utf8');
  } else {
    try {
      text = execFileSync('npm', ['audit', '--omit=dev', '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
    } catch (err) {
      // npm audit exits 1 when it finds anything, and on an endpoint error: its JSON is on stdout either way.
      const out = (err as { stdout?: string }).stdout;
      if (typeof out !== 'string' || !out.trim().startsWith('{')) return (err as Error).message.split('\n', 1)[0] ?? 'npm audit failed';
      text = out;
    }
  }
  try {
    return JSON.parse(text) as NpmAuditReport;
  } catch (err) {
    return `npm audit's answer is not JSON: ${(err as Error).message}`;
  }
}

const problems: string[] = [];
const allow = JSON.parse(readFileSync(values.allowlist, 'utf8')) as { entries?: AllowEntry[] };
const { active, problems: allowProblems, expired } = activeAllowEntries(allow.entries ?? [], new Date().toISOString().slice(0, 10));
problems.push(...allowProblems);
expired.forEach((line) => say(line));

const report = (name: string, findings: Finding[]): number => {
  let failing = 0;
  for (const f of findings) {
    const ok = isAllowed(f, active);
    if (!ok) failing++;
    say(`${ok ? 'allowed' : 'FAIL   '} ${f.severity} ${f.package} ${f.advisories.join(',')} ${f.titles.join('; ')}`);
  }
  say(`${name}: ${findings.length} high/critical, ${findings.length - failing} allowed, ${failing} failing`);
  return failing;
};

// 1. npm audit
let failing = 0;
let npmAuditRan = false;
const npm = runNpmAudit();
const npmResult = typeof npm === 'string' ? { notRun: npm } : findingsOf(npm);
if ('notRun' in npmResult) {
  say(`npm audit: NOT RUN: ${npmResult.notRun}`);
} else {
  npmAuditRan = true;
  failing += report('npm audit (production dependencies)', npmResult.findings);
}

// 2. the kept advisories and integrity pins, against the lockfile
try {
  const packages = productionPackages(JSON.parse(readFileSync(values.lockfile, 'utf8')));
  const kept = JSON.parse(readFileSync(values.advisories, 'utf8')) as { advisories?: KeptAdvisory[] };
  const advisories = kept.advisories ?? [];
  failing += report(`kept advisories (${advisories.length} in ${values.advisories}, ${packages.length} production packages of ${values.lockfile})`, keptAdvisoryFindings(packages, advisories));
  const unpinned = unpinnedPackages(packages);
  for (const p of unpinned) problems.push(`not pinned by a sha512 integrity in ${values.lockfile}: ${p}`);
  if (unpinned.length === 0) say(`integrity: all ${packages.length} production packages pinned by sha512`);
} catch (err) {
  problems.push(`kept advisories: ${(err as Error).message}`);
}

for (const p of problems) say(p);
if (failing > 0 || problems.length > 0) process.exit(1);
process.exit(npmAuditRan ? 0 : 3);
