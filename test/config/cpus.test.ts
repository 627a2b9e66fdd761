/**
 * The CPU count thread pools are sized from: the cores, capped by a container's cgroup CPU quota (v2 cpu.max, v1
 * cfs quota over period), read from a fake cgroup folder.
 */
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { availableCpus, cgroupCpuQuota } from '../../src/config/cpus.js';

function cgroup(t: Test, files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'ocular-cgroup-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

t.test('cgroup v2 cpu.max', async (t) => {
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu.max': 'max 100000\n' })), undefined, 'no limit');
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu.max': '200000 100000\n' })), 2, 'a 2-CPU limit');
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu.max': '150000 100000\n' })), 1.5, 'a 1.5-CPU limit');
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu.max': '50000' })), 0.5, 'the period defaults to 100000');
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu.max': 'garbage here\n' })), undefined, 'unreadable text: no limit');
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu.max': 'max 100000', 'cpu/cpu.cfs_quota_us': '100000', 'cpu/cpu.cfs_period_us': '100000' })), undefined, 'v2 wins over v1 files');
});

t.test('cgroup v1 cfs quota and period', async (t) => {
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu/cpu.cfs_quota_us': '400000\n', 'cpu/cpu.cfs_period_us': '100000\n' })), 4);
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu/cpu.cfs_quota_us': '-1\n', 'cpu/cpu.cfs_period_us': '100000\n' })), undefined, 'quota -1: no limit');
  t.equal(cgroupCpuQuota(cgroup(t, { 'cpu/cpu.cfs_quota_us': '400000\n' })), undefined, 'no period file: no limit');
  t.equal(cgroupCpuQuota(cgroup(t, {})), undefined, 'no cgroup files at all (not Linux, or not mounted)');
});

t.test('availableCpus: the cores, capped by the quota rounded up, at least 1', async (t) => {
  t.equal(availableCpus(64, undefined), 64, 'no limit: every core');
  t.equal(availableCpus(64, 2), 2, 'a 2-CPU limit on a 64-core node');
  t.equal(availableCpus(64, 1.5), 2, 'a fractional limit rounds up');
  t.equal(availableCpus(2, 8), 2, 'a limit above the cores does not add any');
  t.equal(availableCpus(4, 0.25), 1, 'at least 1');
  t.ok(availableCpus() >= 1, 'this machine');
});
