/**
 * Reads Ocular's /metrics before and after a load and derives what the load did inside the server: the mean batch
 * size and where a request's time went (queue, preprocessing, inference). Only the sums and counts of the
 * histograms are needed, so this is a small parser for those lines, not a full exposition-format parser.
 */

export interface MetricsSnapshot {
  /** `name{labels}` -> value, for the _sum and _count series and plain gauges. */
  series: Map<string, number>;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/;

export function parseMetrics(text: string): MetricsSnapshot {
  const series = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.length === 0) continue;
    const m = LINE.exec(line);
    if (m === null) continue;
    const name = m[1] as string;
    if (name.endsWith('_bucket')) continue;
    series.set(`${name}${m[2] ?? ''}`, Number(m[3]));
  }
  return { series };
}

export async function scrapeMetrics(baseUrl: string): Promise<MetricsSnapshot | undefined> {
  try {
    const res = await fetch(new URL('/metrics', baseUrl));
    if (!res.ok) return undefined;
    return parseMetrics(await res.text());
  } catch {
    return undefined; // not an Ocular (the hand-written handler has no /metrics)
  }
}

/** Sum over every series of `name` whose labels include all of `labels` (e.g. model="mobilenetv2"). */
function total(s: MetricsSnapshot, name: string, labels: Record<string, string>): number {
  let sum = 0;
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const [key, value] of s.series) {
    if (!key.startsWith(`${name}{`) && key !== name) continue;
    if (want.every((w) => key.includes(w))) sum += value;
  }
  return sum;
}

export interface ServerSplit {
  /** Batches run and requests per batch over the load. */
  batches: number;
  meanBatchSize: number;
  /** Mean per request, milliseconds. */
  queueMs: number;
  preprocessMs: number;
  /** Mean per batch (the histogram is per batch), milliseconds. */
  inferencePerBatchMs: number;
  /** Mean request duration inside the server, milliseconds. */
  requestMs: number;
  /** Process CPU time (all threads) per answered request, milliseconds: robust to a noisy machine, unlike req/s. */
  cpuMsPerRequest: number;
  /** Resident set size after the load, bytes. */
  rssBytes: number;
}

/** What happened between two snapshots for one model. */
export function diffMetrics(before: MetricsSnapshot, after: MetricsSnapshot, model: string): ServerSplit {
  const d = (name: string, labels: Record<string, string> = {}) =>
    total(after, name, { model, ...labels }) - total(before, name, { model, ...labels });
  const batches = d('ocular_batch_size_count');
  const requests = d('ocular_request_duration_seconds_count');
  const queued = d('ocular_queue_duration_seconds_count');
  const prep = d('ocular_preprocess_duration_seconds_count');
  const perReq = (sum: number, n: number) => (n > 0 ? (sum / n) * 1000 : NaN);
  return {
    batches,
    meanBatchSize: batches > 0 ? d('ocular_batch_size_sum') / batches : NaN,
    queueMs: perReq(d('ocular_queue_duration_seconds_sum'), queued),
    preprocessMs: perReq(d('ocular_preprocess_duration_seconds_sum'), prep),
    inferencePerBatchMs: perReq(d('ocular_inference_duration_seconds_sum'), batches),
    requestMs: perReq(d('ocular_request_duration_seconds_sum'), requests),
    cpuMsPerRequest: perReq(
      (after.series.get('process_cpu_seconds_total') ?? NaN) - (before.series.get('process_cpu_seconds_total') ?? NaN),
      requests,
    ),
    rssBytes: after.series.get('process_resident_memory_bytes') ?? NaN,
  };
}
