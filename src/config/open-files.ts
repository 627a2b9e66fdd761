/**
 * The process's open-file limit. Node raises its soft RLIMIT_NOFILE to the hard limit at startup, so the soft limit
 * read here is the one the server runs under; every client connection holds one descriptor.
 */
import { readFileSync } from 'node:fs';

/** The soft "Max open files" of /proc/self/limits, or undefined where it cannot be read or is unlimited. */
export function openFileLimit(limitsFile = '/proc/self/limits'): number | undefined {
  let text: string;
  try {
    text = readFileSync(limitsFile, 'utf8');
  } catch {
    return undefined;
  }
  const soft = /^Max open files\s+(\S+)/m.exec(text)?.[1];
  const n = Number(soft);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}
