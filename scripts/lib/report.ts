import type { LoadResult } from './load.js';
import type { ServerSplit } from './prom.js';
import { fmt } from './stats.js';

/** One load run and, for an Ocular target, what /metrics says happened inside the server meanwhile. */
export interface LoadRow {
  label: string;
  result: LoadResult;
  server?: ServerSplit | undefined;
}

export function errorsOf(statuses: Record<string, number>): string {
  const bad = Object.entries(statuses).filter(([code]) => !/^2\d\d$/.test(code));
  return bad.length === 0 ? '0' : bad.map(([code, n]) => `${code}: ${n}`).join(', ');
}

/** A Markdown table of load rows. */
export function loadTable(rows: readonly LoadRow[]): string {
  const head =
    '| run | mode | load | req/s (2xx) | p50 ms | p90 ms | p99 ms | max ms | errors | mean batch | queue ms | preprocess ms | inference ms/batch |\n' +
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n';
  const body = rows
    .map(({ label, result: r, server: s }) => {
      const load = r.mode === 'closed' ? `${r.connections} conn` : `${fmt(r.targetRps ?? NaN, 1)} req/s`;
      const l = r.latencyMs;
      const split = s
        ? `${fmt(s.meanBatchSize, 2)} | ${fmt(s.queueMs, 1)} | ${fmt(s.preprocessMs, 1)} | ${fmt(s.inferencePerBatchMs, 1)}`
        : 'n/a | n/a | n/a | n/a';
      return `| ${label} | ${r.mode} | ${load} | ${fmt(r.throughputRps)} | ${fmt(l.p50)} | ${fmt(l.p90)} | ${fmt(l.p99)} | ${fmt(l.max)} | ${errorsOf(r.statuses)} | ${split} |`;
    })
    .join('\n');
  return head + body + '\n';
}
