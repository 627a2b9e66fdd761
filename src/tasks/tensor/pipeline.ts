import type { TensorEntry } from '../../config/manifest.js';
import { ModelCheckError } from '../../core/model-check.js';
import { FEEDABLE_TYPES, zerosOf, type FeedTensor } from '../../core/runner/feeds.js';
import { elementCount } from '../../core/tensor-codec.js';
import type { TensorMeta } from '../../core/types.js';
import { OcularError } from '../../errors.js';
import { z } from 'zod';
import type { PipelineDeps, TaskPipeline } from '../../core/task-pipeline.js';

/**
 * The `tensor` task: a model served as it is, no pre- or post-processing, for the v2 (Open Inference Protocol)
 * API only. The pipeline loads the session pool, checks that every input has a warm-up shape, and warms up at
 * batch 1 and at the stage's largest batch; v2 requests then go through the stage's tensor batcher.
 */

/** Warm-up dims of one input: the manifest's warmupShapes, else the model's own dims with a dynamic batch of n. */
export function warmupDimsOf(entry: TensorEntry, input: TensorMeta, n: number): number[] {
  const given = entry.warmupShapes?.[input.name];
  const dims = given !== undefined ? [...given] : input.shape.map((d, i) => (i === 0 && d === -1 ? 1 : d));
  if (dims.length !== input.shape.length) {
    throw new ModelCheckError(entry.name, `warmupShapes.${input.name}`, `has rank ${dims.length}, the model's input has rank ${input.shape.length}`);
  }
  if (dims.includes(-1)) {
    throw new ModelCheckError(entry.name, `warmupShapes.${input.name}`, `the input's dims [${input.shape.join(',')}] are dynamic: give its warm-up shape`);
  }
  if (input.shape[0] === -1) dims[0] = n;
  return dims;
}

const TensorParamsSchema = z.strictObject({});

/** Takes no query and answers no /v1 prediction (its models are served through v2 infer). */
export type TensorPipeline = TaskPipeline<z.infer<typeof TensorParamsSchema>, never>;

export async function createTensorPipeline(entry: TensorEntry, deps: PipelineDeps): Promise<TensorPipeline> {
  // The first input's warm-up dims are needed before the session exists (the pool's profiled run), so they come
  // from the manifest when given; otherwise the pool's profiling falls back to the model's own dims.
  const firstGiven = entry.warmupShapes !== undefined ? Object.values(entry.warmupShapes)[0] : undefined;
  // No input spec: the stage takes raw tensors only.
  const stage = await deps.createStage('', entry, {
    shapePolicy: 'fixed',
    servesTensors: true,
    ...(firstGiven !== undefined ? { warmupDims: firstGiven } : {}),
  });
  const { inputs } = stage.pool.info;
  for (const input of inputs) {
    if (!FEEDABLE_TYPES.has(input.type)) {
      throw new ModelCheckError(entry.name, `input ${input.name}`, `type ${input.type} is not supported by the runner (${[...FEEDABLE_TYPES].join(', ')})`);
    }
    warmupDimsOf(entry, input, 1);
  }
  for (const name of Object.keys(entry.warmupShapes ?? {})) {
    if (!inputs.some((i) => i.name === name)) {
      throw new ModelCheckError(entry.name, `warmupShapes.${name}`, `the model has no input "${name}" (inputs: ${inputs.map((i) => i.name).join(', ')})`);
    }
  }

  const warmupAt = async (n: number): Promise<void> => {
    const feeds: Record<string, FeedTensor> = {};
    for (const input of inputs) {
      const dims = warmupDimsOf(entry, input, n);
      feeds[input.name] = { data: zerosOf(input.type, elementCount(dims)), dims, type: input.type };
    }
    await stage.pool.runTensors(feeds);
  };

  return {
    task: entry.task,
    stages: [stage],
    paramsSchema: TensorParamsSchema,
    predict() {
      return Promise.reject(
        new OcularError('INVALID_REQUEST', `model "${entry.name}" serves raw tensors: use POST /v2/models/${entry.name}/infer`),
      );
    },
    async warmup() {
      const batchDynamic = inputs.every((i) => i.shape[0] === -1);
      // A stage that pads its batches (the GPU policy) runs every request at its batch limit: warm that shape only.
      if (stage.padsBatches && batchDynamic) {
        await warmupAt(stage.batchLimit);
        return;
      }
      await warmupAt(1);
      if (batchDynamic && stage.maxBatchSize > 1) await warmupAt(stage.maxBatchSize);
    },
  };
}
