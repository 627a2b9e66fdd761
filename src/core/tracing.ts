import type { ItemResult, RunResult } from './run-result.js';
import type { Timings } from './telemetry.js';

/**
 * What the framework-free core tells a tracer, without knowing OpenTelemetry (plugins/tracing.ts implements it):
 * a request's stages as they end, and each batch a stage runs. A request's spans are recorded when each stage has
 * ended, from the times it already measures for its Timings (performance.now() clock), so nothing here carries a
 * span through async code, and with tracing off nothing is called at all (Timings.trace is absent).
 */

/** The stages of a request that its own code times; the queue and inference come from its run (recordRun). */
export type TracedStage = 'preprocess' | 'postprocess';

/** One request's trace (its server span and what hangs under it). */
export interface RequestTrace {
  /** A stage of this request ran from `startMs` to `endMs` (performance.now() clock). */
  stage(name: TracedStage, startMs: number, endMs: number): void;
  /** One queued run of this request: its wait from `run.enqueuedAt` and its batch's run, linked to the batch. */
  run(run: RunResult): void;
}

/** What a batch span describes: never a request's identifier or data, only the batch and the model. */
export interface BatchAttributes {
  model: string;
  version: string;
  stage: string;
  provider: string;
  size: number;
  /** images: the stage's image batcher; tensors: its raw-tensor batcher (the v2 API). */
  kind: 'images' | 'tensors';
}

/** A batch's span while it runs; `link` is what each request's inference span links to (opaque to core). */
export interface BatchSpan {
  readonly link: unknown;
  end(error?: unknown): void;
}

/** Starts one span per batch a stage runs from its queue (warm-up runs are not traced). */
export interface BatchTracer {
  startBatch(attrs: BatchAttributes): BatchSpan;
}

/**
 * Runs a batch under its span: the span ends when the batch does (failed, with the error), and each result that
 * is not an Error carries the span's link to its request (ItemResult.batch). Without a tracer, just runs it.
 */
export async function traceBatch<R extends ItemResult>(
  tracer: BatchTracer | undefined,
  attrs: () => BatchAttributes,
  run: () => Promise<(R | Error)[]>,
): Promise<(R | Error)[]> {
  if (tracer === undefined) return run();
  const span = tracer.startBatch(attrs());
  let results: (R | Error)[];
  try {
    results = await run();
  } catch (err) {
    span.end(err);
    throw err;
  }
  span.end();
  for (const r of results) if (!(r instanceof Error)) r.batch = span.link;
  return results;
}

/** Adds a stage's time, from `since` to now, to the request's timings, and to its trace where it is traced. */
export function recordStage(timings: Timings, stage: TracedStage, since: number): void {
  const now = performance.now();
  if (stage === 'preprocess') timings.preprocessMs += now - since;
  else timings.postprocessMs += now - since;
  timings.trace?.stage(stage, since, now);
}

/**
 * Records a queued run in the request's trace (its queue and inference spans). The Timings' queue and inference
 * times are the caller's to add: a request of several runs reports them as it chooses (the longest, the last).
 */
export function recordRun(timings: Timings, run: RunResult): void {
  timings.trace?.run(run);
}
