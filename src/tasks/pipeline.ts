import type { z } from 'zod';
import type { InputSpec } from '../config/input-spec.js';
import type { StageEntry, Task } from '../config/manifest.js';
import { shouldTune, toleranceFor, tuneBatchSize } from '../core/batch-tuning.js';
import { isDynamicSize } from '../core/model-check.js';
import type { Stage, StageOptions } from '../core/stage.js';
import type { Timings } from '../core/telemetry.js';
import type { Outputs, PreparedImage, PreparedPixels } from '../core/types.js';
import { OcularError } from '../errors.js';
import type { DecodeLimits, ImagePreparer } from './preprocess/image.js';

/**
 * One pipeline per task (after transformers.js): preprocess, run through the model's stage(s), postprocess.
 * A pipeline is built by the registry once its stages are loaded, and is framework-free: routes call `predict`.
 */

export interface PredictContext {
  signal?: AbortSignal | undefined;
  timings: Timings;
}

/** Every answer carries the EXIF-upright size of the image it describes. */
export interface ImageResult {
  width: number;
  height: number;
}

export interface TaskPipeline {
  readonly task: Task;
  readonly stages: readonly Stage[];
  /** Validates the task's query parameters; unknown parameters are refused. */
  readonly paramsSchema: z.ZodType<Record<string, unknown>>;
  /** `params` must already be parsed by paramsSchema. */
  predict(image: Buffer, params: Record<string, unknown>, ctx: PredictContext): Promise<ImageResult & Record<string, unknown>>;
  /** Batches at size 1 and at each stage's maximum, at the nominal size, before the model is READY. */
  warmup(): Promise<void>;
}

export interface StageRequest {
  shapePolicy: StageOptions['shapePolicy'];
  /** Dims of the profiled warm-up run of the stage's first input; default the input spec's nominal size at batch 1. */
  warmupDims?: number[];
}

export interface PipelineDeps {
  baseDir: string;
  limits: DecodeLimits;
  /** Decodes and resizes an image for a stage: prepareImage here or in a preprocessing process. */
  prepare: ImagePreparer;
  /** Fetches, verifies and loads a stage; the registry owns (and on failure closes) every stage it creates. */
  createStage(field: string, entry: StageEntry, request: StageRequest): Promise<Stage>;
}

export function parseParams<T>(schema: z.ZodType<T>, params: unknown): T {
  const parsed = schema.safeParse(params ?? {});
  if (!parsed.success) {
    const msg = parsed.error.issues.map((i) => `${i.path.join('.') || 'query'}: ${i.message}`).join('; ');
    throw new OcularError('INVALID_PARAMETER', msg);
  }
  return parsed.data;
}

/** Tensor dims for `n` images of the input spec's nominal size. */
export function nominalDims(spec: InputSpec, n: number): number[] {
  return spec.layout === 'NCHW' ? [n, 3, spec.height, spec.width] : [n, spec.height, spec.width, 3];
}

/** A flat mid-grey image of the nominal size, for warm-up. */
export function greyPixels(width: number, height: number): PreparedPixels {
  return { pixels: new Uint8Array(width * height * 3).fill(128), width, height };
}

/**
 * Warm-up of one stage: a batch of 1, then a full batch, at the nominal size. `fullBatchWidth` narrows the full
 * batch: the OCR recognizer's nominal width is its widest crop (960), and 16 of those cost about 2.4 s of CPU on
 * the CPU provider, most of the default manifest's time to ready, for no more warming than narrower crops give.
 *
 * Then, for a stage of one fixed input size whose `batching.tune` applies to its provider, the batch-size tuning
 * (src/core/batch-tuning.ts): every real batch has the nominal size, so what is timed here is what will run.
 * Stages of dynamic size (OCR) are not tuned: their batches rarely fill, and the nominal size says little.
 *
 * A stage that pads its batches (Stage.padsBatches) runs both warm-up batches at its batch limit, and once more
 * after tuning, at the limit tuning chose: the CUDA provider keeps the plans of the last input shape only, so the
 * last warm-up run must have the shape every later run has.
 */
export async function warmupStage(
  stage: Stage,
  spec: InputSpec,
  policy: StageOptions['shapePolicy'],
  fullBatchWidth = spec.width,
): Promise<void> {
  const item = greyPixels(spec.width, spec.height);
  await stage.runDirect([item], policy);
  if (stage.maxBatchSize <= 1) return;
  const full = fullBatchWidth === spec.width ? item : greyPixels(Math.min(spec.width, fullBatchWidth), spec.height);
  await stage.runDirect(Array.from({ length: stage.maxBatchSize }, () => full), policy);
  if (policy !== 'fixed' || !shouldTune(stage.batching.tune, stage.pool.info.provider, stage.maxBatchSize)) return;
  const tuning = await tuneBatchSize({
    maxBatchSize: stage.maxBatchSize,
    tolerance: toleranceFor(stage.pool.info.provider),
    warmed: [1, stage.maxBatchSize],
    runBatch: (n) => stage.runDirect(Array.from({ length: n }, () => item), policy, { pad: false }),
  });
  stage.applyTuning(tuning);
  if (stage.padsBatches) await stage.runDirect([item], policy);
}

export function shapePolicyOf(spec: InputSpec): StageOptions['shapePolicy'] {
  return isDynamicSize(spec) ? 'same-size' : 'fixed';
}

/** Throws CLIENT_CLOSED_REQUEST when the client went away: no further work is done for it. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new OcularError('CLIENT_CLOSED_REQUEST');
}

export const elapsedMs = (since: number): number => performance.now() - since;

/**
 * The common path of a single-stage image task: decode and prepare the image, queue it on the stage, and add the
 * preprocess, queue and inference times to `ctx.timings`. The task then postprocesses the outputs.
 */
export async function prepareAndRun(
  stage: Stage,
  image: Buffer,
  spec: InputSpec,
  deps: Pick<PipelineDeps, 'limits' | 'prepare'>,
  { signal, timings }: PredictContext,
): Promise<{ prepared: PreparedImage; outputs: Outputs }> {
  const started = performance.now();
  const prepared = await deps.prepare(image, spec, deps.limits);
  timings.preprocessMs += elapsedMs(started);
  throwIfAborted(signal);
  const run = await stage.run(prepared, signal);
  timings.queueMs += run.queueMs;
  timings.inferenceMs += run.inferenceMs;
  return { prepared, outputs: run.outputs };
}
