import type { RequestTrace } from './tracing.js';

/**
 * What the framework-free core reports about its work. The metrics plugin implements it with prom-client; tests
 * and scripts can pass their own. Durations in seconds.
 */
export interface Telemetry {
  /** One batch ran (or failed) on a stage of a model. */
  batch(model: string, stage: string, size: number, inferenceSeconds: number): void;
  /** A model (all its stages) finished loading. */
  modelLoaded(model: string, version: string, provider: string, seconds: number): void;
  /** A model failed to load (its old version, if any, still serves). */
  modelLoadFailed?(model: string): void;
  /** A model stopped being served. */
  modelUnloaded?(model: string): void;
}

export const noopTelemetry: Telemetry = {
  batch() {},
  modelLoaded() {},
};

/** Per-request stage timings in milliseconds, filled in as the request moves through the pipeline. */
export interface Timings {
  preprocessMs: number;
  queueMs: number;
  inferenceMs: number;
  postprocessMs: number;
  /** The request's trace where it is traced (tracing on); its stages are recorded with recordStage and recordRun. */
  trace?: RequestTrace | undefined;
}

export function emptyTimings(): Timings {
  return { preprocessMs: 0, queueMs: 0, inferenceMs: 0, postprocessMs: 0 };
}
