/**
 * Compute threads at a lower scheduling priority than the event loop (Linux).
 *
 * Why: on a saturated machine the main thread, which answers /healthz and /readyz, accepts requests and hands
 * out results, competes for the cores with the threads that decode images (libvips workers) and run inference
 * (one worker thread per session, plus onnxruntime's intra-op threads). At equal priority the scheduler makes it
 * wait its turn behind them, and probes time out while the server is merely busy. Lowering the compute threads'
 * priority (a positive nice value, which needs no privilege) lets the event loop run as soon as it has work; the
 * compute threads still get every cycle it leaves, so throughput is unchanged. Measured in docs/PERFORMANCE.md.
 *
 * How, since Linux keeps a nice value per thread and Node names none of its own:
 * - an inference worker lowers itself (`/proc/thread-self` gives its thread id) before it creates its session,
 *   so the intra-op threads onnxruntime starts inherit the value;
 * - libvips starts its worker threads (named "libvips worker") from libuv's pool as it needs them, so the main
 *   thread lowers those it finds, once a second, in `/proc/self/task`.
 * Elsewhere than Linux, and where /proc is not mounted, nothing is changed and the reason is returned.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';

/** The calling thread's kernel id, or undefined where /proc/thread-self is unavailable. */
export function currentThreadId(): number | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isInteger(tid) && tid > 0 ? tid : undefined;
  } catch {
    return undefined;
  }
}

/** The nice value of thread `tid` of this process (field 19 of /proc/self/task/TID/stat), or undefined. */
export function threadNice(tid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const nice = Number(fields[16]);
    return Number.isInteger(nice) ? nice : undefined;
  } catch {
    return undefined;
  }
}

/** Sets the calling thread's nice value; returns why not where it cannot. */
export function lowerCurrentThread(nice: number): { ok: true; tid: number } | { ok: false; reason: string } {
  const tid = currentThreadId();
  if (tid === undefined) return { ok: false, reason: 'per-thread priorities need Linux and /proc' };
  try {
    setPriority(tid, nice);
    return { ok: true, tid };
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

export interface ThreadRenicer {
  /** Lowers every matching thread not yet at `nice`; returns how many were changed. */
  scan(): number;
  stop(): void;
}

/**
 * Lowers this process's threads named `name` to `nice`, now and every `intervalMs` (the timer does not keep the
 * process alive). A thread that ends between the listing and the change is skipped.
 */
export function startThreadRenicer(opts: { nice: number; name?: string; intervalMs?: number }): ThreadRenicer {
  const name = opts.name ?? 'libvips worker';
  const scan = (): number => {
    let changed = 0;
    let tids: string[];
    try {
      tids = readdirSync('/proc/self/task');
    } catch {
      return 0;
    }
    for (const entry of tids) {
      const tid = Number(entry);
      try {
        if (readFileSync(`/proc/self/task/${entry}/comm`, 'utf8').trim() !== name) continue;
        if (threadNice(tid) === opts.nice) continue;
        setPriority(tid, opts.nice);
        changed++;
      } catch {
        // The thread ended meanwhile.
      }
    }
    return changed;
  };
  scan();
  const timer = setInterval(scan, opts.intervalMs ?? 1000);
  timer.unref();
  return { scan, stop: () => clearInterval(timer) };
}
