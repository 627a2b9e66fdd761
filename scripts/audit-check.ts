/**
 * CI's dependency audit: `npm audit --omit=dev --json` (production dependencies only), then every high or critical
 * finding fails unless audit-allowlist.json lists it (by GHSA id or package name) with a reason, the date it was
 * added, and an expiry date not yet passed.
 *
 * Exit codes: 0 clean (or every finding allowed); 1 findings not allowed, or an invalid allowlist; 3 the audit
 * could not run (registry unreachable, or an audit endpoint that does not answer, as behind some mirrors). Exit 3
 * is reported loudly and .ci/run treats it as "not run", not as "passed"; AUDIT_REQUIRED=1 makes it fail.
 *
 * `npx tsx scripts/audit-check.ts [--input saved-audit.json] [--allowlist path]`
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface Entry {
  advisory?: string;
  package?: string;
  reason: string;
  added: string;
  expires: string;
}

interface Finding {
  package: string;
  severity: string;
  advisories: string[];
  titles: string[];
}

const { values } = parseArgs({ options: { input: { type: 'string' }, allowlist: { type: 'string', default: 'audit-allowlist.json' } } });

function runAudit(): string {
  if (values.input !== undefined) return readFileSync(values.input, 'utf8');
  try {
    return execFileSync('npm', ['audit', '--omit=dev', '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
  } catch (err) {
    // npm audit exits 1 when it finds anything: its JSON is still on stdout.
    const out = (err as { stdout?: string }).stdout;
    if (typeof out === 'string' && out.trim().startsWith('{')) return out;
    throw err;
  }
}

function notRun(why: string): never {
  process.stdout.write(`npm audit: NOT RUN: ${why}\n`);
  process.exit(3);
}

const date = /^\d{4}-\d{2}-\d{2}$/;
const allow = JSON.parse(readFileSync(values.allowlist, 'utf8')) as { entries?: Entry[] };
const problems: string[] = [];
const today = new Date().toISOString().slice(0, 10);
const active: Entry[] = [];
for (const [i, e] of (allow.entries ?? []).entries()) {
  if ((e.advisory === undefined) === (e.package === undefined)) problems.push(`allowlist entry ${i}: give exactly one of advisory, package`);
  if (typeof e.reason !== 'string' || e.reason.trim().length < 10) problems.push(`allowlist entry ${i}: a reason is required`);
  if (!date.test(String(e.added)) || !date.test(String(e.expires))) problems.push(`allowlist entry ${i}: added and expires are YYYY-MM-DD dates`);
  else if (e.expires < today) process.stdout.write(`allowlist entry ${i} (${e.advisory ?? e.package}) expired on ${e.expires}: it no longer counts\n`);
  else active.push(e);
}

let report: { vulnerabilities?: Record<string, { severity: string; via: unknown[] }>; error?: unknown; message?: string; statusCode?: number };
try {
  report = JSON.parse(runAudit()) as typeof report;
} catch (err) {
  notRun((err as Error).message.split('\n', 1)[0] ?? 'npm audit failed');
}
if (report.vulnerabilities === undefined) {
  notRun(report.message ?? (report.statusCode !== undefined ? `HTTP ${report.statusCode}` : 'no vulnerabilities section in the answer'));
}

const findings: Finding[] = [];
for (const [name, v] of Object.entries(report.vulnerabilities)) {
  if (v.severity !== 'high' && v.severity !== 'critical') continue;
  const via = v.via.filter((x): x is { url?: string; title?: string } => typeof x === 'object' && x !== null);
  findings.push({
    package: name,
    severity: v.severity,
    advisories: via.map((x) => /GHSA-[\w-]+/.exec(x.url ?? '')?.[0]).filter((x): x is string => x !== undefined),
    titles: via.map((x) => x.title ?? '').filter((x) => x !== ''),
  });
}
const allowed = (f: Finding) => active.some((e) => e.package === f.package || (e.advisory !== undefined && f.advisories.includes(e.advisory)));
const failing = findings.filter((f) => !allowed(f));
for (const f of findings) {
  process.stdout.write(`${allowed(f) ? 'allowed' : 'FAIL   '} ${f.severity} ${f.package} ${f.advisories.join(',')} ${f.titles.join('; ')}\n`);
}
for (const p of problems) process.stdout.write(`${p}\n`);
process.stdout.write(`npm audit (production dependencies): ${findings.length} high/critical, ${findings.length - failing.length} allowed, ${failing.length} failing\n`);
process.exit(failing.length > 0 || problems.length > 0 ? 1 : 0);
