import { z } from 'zod';
import type { InputSpec } from '../config/input-spec.js';
import type { StageEntry } from '../config/manifest.js';
import { shouldTune, toleranceFor, tuneBatchSize } from '../core/batch-tuning.js';
import { checkImageInput, isDynamicSize, ModelCheckError } from '../core/model-check.js';
import { sizeHintsOf } from '../core/model-metadata.js';
import { everyBucket } from '../core/size-buckets.js';
import type { Stage, StageOptions } from '../core/stage.js';
import type { ImageTransform, Outputs, PreparedImage, PreparedPixels } from '../core/types.js';
import { OcularError, closestMatch, describeValue, issuesText, listText } from '../errors.js';
import type { ImageResult, PipelineDeps, PredictContext } from '../core/task-pipeline.js';
import { recordRun, recordStage } from '../core/tracing.js';

/**
 * What the task pipelines share (after transformers.js: one pipeline per task, preprocess, run, postprocess):
 * query parsing, warm-up, and the predict path of a single-stage image task. The contract itself
 * (TaskPipeline, PipelineDeps) is core's: src/core/task-pipeline.ts.
 */

export function parseParams<T>(schema: z.ZodType<T>, params: unknown, sentKeys: readonly string[] = []): T {
  // The keys as sent: a parsed query object may have dropped some (`__proto__`), which must be refused all the same.
  if (schema instanceof z.ZodObject) {
    const valid = Object.keys(schema.shape);
    const unknown = sentKeys.find((k) => !valid.includes(k));
    if (unknown !== undefined) throw unknownKeyError(unknown, valid);
  }
  const parsed = schema.safeParse(params ?? {});
  if (!parsed.success) {
    const unknown = parsed.error.issues.find((i) => i.code === 'unrecognized_keys');
    if (unknown !== undefined && schema instanceof z.ZodObject) throw unknownKeyError(unknown.keys[0] ?? '', Object.keys(schema.shape));
    throw new OcularError('INVALID_PARAMETER', issuesText(parsed.error.issues, 'query'));
  }
  return parsed.data;
}

/** A query key the model's task does not take: the valid ones, and the closest of them. */
function unknownKeyError(key: string, valid: readonly string[]): OcularError {
  const accepted = valid.length === 0 ? "this model's task takes no query parameters" : `this model's task takes ${listText(valid)}`;
  const near = closestMatch(key, valid);
  return new OcularError('INVALID_PARAMETER', `unknown query parameter ${describeValue(key, 48)}: ${accepted}${near !== undefined ? `; did you mean "${near}"?` : ''}`);
}

/** A flat mid-grey image of the nominal size, for warm-up. */
export function greyPixels(width: number, height: number): PreparedPixels {
  return { pixels: new Uint8Array(width * height * 3).fill(128), width, height };
}

/**
 * Warm-up of one stage: a batch of 1, then a full batch, at the nominal size. `fullBatchWidth` narrows the full
 * batch: the OCR recognizer's nominal width is its widest crop, and a full batch of those costs most of the
 * default manifest's time to ready on the CPU provider, for no more warming than narrower crops give.
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

/**
 * Warm-up of a bucketed stage (Stage.buckets): one item of each bucket's size, as a batch of 1 (padded to the batch
 * limit where the stage pads its batches, so that each run has a shape later batches will have). Nothing for a stage
 * without buckets. The CUDA provider plans its convolutions for each input shape on the first run of it: after this,
 * no request pays for a plan.
 */
export async function warmupBuckets(stage: Stage, policy: StageOptions['shapePolicy']): Promise<void> {
  if (stage.buckets === undefined) return;
  for (const { width, height } of everyBucket(stage.buckets)) await stage.runDirect([greyPixels(width, height)], policy);
}

/**
 * The one stage of a single-stage image task (classification, detection), which also serves the model's raw
 * tensors (v2), with its image input checked against the model.
 */
export async function createImageStage(
  entry: StageEntry & { name: string; input: InputSpec },
  deps: Pick<PipelineDeps, 'createStage'>,
  policy: StageOptions['shapePolicy'],
): Promise<Stage> {
  const stage = await deps.createStage('', entry, { shapePolicy: policy, servesTensors: true, rejectUnsupportedExports: true });
  checkImageInput(entry.name, 'input', entry.input, stage.pool.info.inputs);
  await checkStride(entry.name, entry.input, stage);
  return stage;
}

/**
 * A model whose metadata gives its stride (Ultralytics' `stride`, with `imgsz`: core/model-metadata.ts) runs only
 * at sizes that are multiples of it: a manifest size that is not fails at load rather than at the first request
 * (where the export's dynamic axes would let it through to a shape error or a misaligned grid).
 */
async function checkStride(model: string, spec: InputSpec, stage: Stage): Promise<void> {
  const hints = sizeHintsOf(await stage.metadata().catch(() => new Map<string, string>()));
  const stride = hints?.stride;
  if (stride === undefined || isDynamicSize(spec)) return;
  for (const side of ['width', 'height'] as const) {
    if (spec[side] % stride !== 0) {
      throw new ModelCheckError(model, `input.${side}`, `${spec[side]} is not a multiple of the model's stride ${stride} (its metadata; exported at ${hints?.width}x${hints?.height})`);
    }
  }
}

export function shapePolicyOf(spec: InputSpec): StageOptions['shapePolicy'] {
  return isDynamicSize(spec) ? 'same-size' : 'fixed';
}

/** Throws CLIENT_CLOSED_REQUEST when the client went away: no further work is done for it. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new OcularError('CLIENT_CLOSED_REQUEST');
}

/**
 * The predict of a single-stage image task: decode and prepare the image, queue it on the stage, then the task's
 * `postprocess` of the outputs; the preprocess, queue, inference and postprocess times are added to `ctx.timings`.
 * The answer is the original image's size and what postprocess returned.
 */
export async function predictImage<R extends object>(
  stage: Stage,
  image: Buffer,
  spec: InputSpec,
  deps: Pick<PipelineDeps, 'limits' | 'prepare'>,
  ctx: PredictContext,
  postprocess: (outputs: Outputs, transform: ImageTransform) => R,
): Promise<ImageResult & R> {
  const [run] = await prepareAndRunAll(stage, [image], spec, deps, ctx);
  const { prepared, outputs } = run as { prepared: PreparedImage; outputs: Outputs };
  const t = performance.now();
  const result = postprocess(outputs, prepared.transform);
  recordStage(ctx.timings, 'postprocess', t);
  return { width: prepared.transform.originalWidth, height: prepared.transform.originalHeight, ...result };
}

/**
 * The prepare and run of predictImage for several images at once (a v2 request's BYTES input), in order. They are prepared and queued
 * side by side, so the times added are the preprocessing of every image (CPU work, summed) and the longest queue
 * wait and inference among them (they wait and run together, mostly in one batch).
 */
export async function prepareAndRunAll(
  stage: Stage,
  images: readonly Buffer[],
  spec: InputSpec,
  deps: Pick<PipelineDeps, 'limits' | 'prepare'>,
  { signal, timings }: PredictContext,
): Promise<{ prepared: PreparedImage; outputs: Outputs }[]> {
  let queueMs = 0;
  let inferenceMs = 0;
  const runs = await Promise.all(
    images.map(async (image) => {
      // The client may have left while earlier images of its request were prepared.
      throwIfAborted(signal);
      const started = performance.now();
      const prepared = await deps.prepare(image, spec, deps.limits, signal);
      recordStage(timings, 'preprocess', started);
      throwIfAborted(signal);
      const run = await stage.run(prepared, signal);
      recordRun(timings, run);
      queueMs = Math.max(queueMs, run.queueMs);
      inferenceMs = Math.max(inferenceMs, run.inferenceMs);
      return { prepared, outputs: run.outputs };
    }),
  );
  timings.queueMs += queueMs;
  timings.inferenceMs += inferenceMs;
  return runs;
}
