/**
 * External programs some tests drive for real (Debian's chromium and prometheus). Where one is absent the test
 * skips with a printed reason, except under OCULAR_REQUIRE_SHARED=1 (set by .ci/run, which installs them), where
 * its absence is a failure: CI always runs these checks.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { sharedRequired } from './shared.js';

/** The absolute path of an executable: `preferred` when it is one, else the first `name` on PATH. */
export function findExecutable(name: string, preferred?: string): string | undefined {
  const candidates = [...(preferred !== undefined ? [preferred] : []), ...(process.env['PATH'] ?? '').split(delimiter).map((d) => join(d, name))];
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Options for t.test(name, opts, fn): skip with the reason where the program is absent (fail under
 * OCULAR_REQUIRE_SHARED=1: the test then runs and its first check fails, see requireExecutable).
 */
export function toolTestOptions(path: string | undefined, what: string): { skip?: string } {
  if (path !== undefined || sharedRequired) return {};
  return { skip: `${what} is not installed (apt-get install --no-install-recommends ${what}; .ci/run installs it)` };
}

interface Failable {
  fail(message: string): unknown;
}

/** True when the program was found; otherwise fails the test (only reached under OCULAR_REQUIRE_SHARED=1). */
export function requireExecutable(t: Failable, path: string | undefined, what: string): path is string {
  if (path !== undefined) return true;
  t.fail(`OCULAR_REQUIRE_SHARED=1 but ${what} is not installed (.ci/run installs it)`);
  return false;
}
