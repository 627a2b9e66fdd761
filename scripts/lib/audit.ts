/**
 * The logic of the dependency audit (scripts/audit-check.ts), free of processes and files so that it is tested
 * (test/scripts/audit.test.ts): the allowlist's rules, npm audit's JSON read into findings, and the fallback
 * that needs no audit endpoint: the advisories the repository keeps (audit-advisories.json) matched against the
 * production packages of package-lock.json, each of which must also be pinned by a sha512 integrity.
 */

export interface AllowEntry {
  advisory?: string;
  package?: string;
  reason: string;
  added: string;
  expires: string;
}

export interface Finding {
  package: string;
  severity: string;
  advisories: string[];
  titles: string[];
}

/** An advisory the repository keeps: `vulnerable` is a range of versions, e.g. `<4.2.1` or `>=2.0.0 <2.3.4 || <1.9.9`. */
export interface KeptAdvisory {
  id: string;
  package: string;
  vulnerable: string;
  severity: 'low' | 'moderate' | 'high' | 'critical';
  title: string;
}

export interface LockedPackage {
  name: string;
  version: string;
  /** Where in node_modules (the lockfile's key). */
  path: string;
  integrity?: string | undefined;
}

const DATE = /^\d{4}-\d{2}-\d{2}$/;

/** The allowlist's entries that count today, and the problems that make the list invalid (each fails the check). */
export function activeAllowEntries(entries: readonly AllowEntry[], today: string): { active: AllowEntry[]; problems: string[]; expired: string[] } {
  const active: AllowEntry[] = [];
  const problems: string[] = [];
  const expired: string[] = [];
  entries.forEach((e, i) => {
    const before = problems.length;
    if ((e.advisory === undefined) === (e.package === undefined)) problems.push(`allowlist entry ${i}: give exactly one of advisory, package`);
    if (typeof e.reason !== 'string' || e.reason.trim().length < 10) problems.push(`allowlist entry ${i}: a reason is required`);
    if (!DATE.test(String(e.added)) || !DATE.test(String(e.expires))) problems.push(`allowlist entry ${i}: added and expires are YYYY-MM-DD dates`);
    if (problems.length > before) return;
    if (e.expires < today) expired.push(`allowlist entry ${i} (${e.advisory ?? e.package}) expired on ${e.expires}: it no longer counts`);
    else active.push(e);
  });
  return { active, problems, expired };
}

export interface NpmAuditReport {
  vulnerabilities?: Record<string, { severity: string; via: unknown[] }>;
  message?: string;
  statusCode?: number;
}

/** High and critical findings of `npm audit --json`; undefined (with why) when the answer is not an audit. */
export function findingsOf(report: NpmAuditReport): { findings: Finding[] } | { notRun: string } {
  if (report.vulnerabilities === undefined) {
    return { notRun: report.message ?? (report.statusCode !== undefined ? `HTTP ${report.statusCode}` : 'no vulnerabilities section in the answer') };
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
  return { findings };
}

export function isAllowed(f: Finding, active: readonly AllowEntry[]): boolean {
  return active.some((e) => e.package === f.package || (e.advisory !== undefined && f.advisories.includes(e.advisory)));
}

/** Production packages of a package-lock.json (v2 or v3 `packages`): every entry not marked dev or devOptional. */
export function productionPackages(lock: unknown): LockedPackage[] {
  const packages = (lock as { packages?: Record<string, { version?: string; dev?: boolean; devOptional?: boolean; integrity?: string; link?: boolean; name?: string }> }).packages;
  if (packages === undefined || typeof packages !== 'object') throw new Error('package-lock.json has no "packages" section (lockfileVersion 2 or 3 is needed)');
  const out: LockedPackage[] = [];
  for (const [path, p] of Object.entries(packages)) {
    if (path === '' || p.dev === true || p.devOptional === true || p.link === true || p.version === undefined) continue;
    const name = p.name ?? path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length);
    out.push({ name, version: p.version, path, integrity: p.integrity });
  }
  return out;
}

type Version = [number, number, number];

function parseVersion(v: string): Version | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$/.exec(v.trim());
  return m === null ? undefined : [Number(m[1]), Number(m[2]), Number(m[3])];
}

function compare(a: Version, b: Version): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/**
 * Whether `version` is in `range`: comparators (`<`, `<=`, `>`, `>=`, `=`, or a bare version) joined by spaces
 * (all must hold) and `||` (any group). Prerelease tags are ignored. Throws on a range it cannot read, so a typo
 * in the advisory list is an error, never a silent miss.
 */
export function inRange(version: string, range: string): boolean {
  const v = parseVersion(version);
  if (v === undefined) throw new Error(`cannot read version "${version}"`);
  return range.split('||').some((group) => {
    const parts = group.trim().split(/\s+/).filter((p) => p !== '');
    if (parts.length === 0) throw new Error(`empty range group in "${range}"`);
    return parts.every((part) => {
      const m = /^(<=|>=|<|>|=)?(.+)$/.exec(part);
      const bound = m === null ? undefined : parseVersion(m[2] ?? '');
      if (m === null || bound === undefined) throw new Error(`cannot read "${part}" in range "${range}"`);
      const c = compare(v, bound);
      switch (m[1]) {
        case '<':
          return c < 0;
        case '<=':
          return c <= 0;
        case '>':
          return c > 0;
        case '>=':
          return c >= 0;
        default:
          return c === 0;
      }
    });
  });
}

/** The lockfile's production packages that a kept advisory names, as findings (high and critical only). */
export function keptAdvisoryFindings(packages: readonly LockedPackage[], advisories: readonly KeptAdvisory[]): Finding[] {
  const findings: Finding[] = [];
  for (const a of advisories) {
    if (a.severity !== 'high' && a.severity !== 'critical') continue;
    for (const p of packages) {
      if (p.name === a.package && inRange(p.version, a.vulnerable)) {
        findings.push({ package: p.name, severity: a.severity, advisories: [a.id], titles: [`${a.title} (${p.version} at ${p.path}; vulnerable ${a.vulnerable})`] });
      }
    }
  }
  return findings;
}

/** Production packages not pinned by a sha512 integrity: npm ci could not verify what it installs. */
export function unpinnedPackages(packages: readonly LockedPackage[]): string[] {
  return packages.filter((p) => p.integrity === undefined || !p.integrity.startsWith('sha512-')).map((p) => `${p.name}@${p.version} (${p.path})`);
}
