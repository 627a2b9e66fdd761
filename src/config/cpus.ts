/**
 * How many CPUs this process may use. os.availableParallelism() counts the cores of the affinity mask, which in a
 * container is usually the whole node's; a CPU limit (Kubernetes `resources.limits.cpu`, `docker run --cpus`) is a
 * cgroup quota instead, invisible to it. Sizing thread pools from the node's cores under a 2-CPU limit
 * oversubscribes the limit many times over, so the quota caps the count where one is set.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

/**
 * The cgroup CPU quota in CPUs (e.g. 1.5), or undefined where none is set or none can be read: cgroup v2's
 * `cpu.max` ("max 100000" or "150000 100000"), else v1's `cpu/cpu.cfs_quota_us` over `cpu/cpu.cfs_period_us`
 * (quota -1: none).
 */
export function cgroupCpuQuota(root = '/sys/fs/cgroup'): number | undefined {
  const read = (path: string): string | undefined => {
    try {
      return readFileSync(join(root, path), 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const ratio = (quota: number, period: number): number | undefined =>
    Number.isFinite(quota) && Number.isFinite(period) && quota > 0 && period > 0 ? quota / period : undefined;
  const v2 = read('cpu.max');
  if (v2 !== undefined) {
    const [quota, period] = v2.split(/\s+/);
    return quota === 'max' ? undefined : ratio(Number(quota), Number(period ?? 100_000));
  }
  const v1Quota = read('cpu/cpu.cfs_quota_us');
  const v1Period = read('cpu/cpu.cfs_period_us');
  return v1Quota === undefined || v1Period === undefined ? undefined : ratio(Number(v1Quota), Number(v1Period));
}

/** The cores of the affinity mask, capped by the cgroup quota rounded up; at least 1. */
export function availableCpus(cores = availableParallelism(), quota = cgroupCpuQuota()): number {
  return Math.max(1, quota === undefined ? cores : Math.min(cores, Math.ceil(quota)));
}
