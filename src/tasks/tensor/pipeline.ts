import type { StageEntry, TensorEntry } from '../../config/manifest.js';
import { InputSpecSchema } from '../../config/input-spec.js';
import { ModelCheckError } from '../../core/model-check.js';
import type { TensorFeed } from '../../core/tensor-batcher.js';
import type { TensorMeta } from '../../core/types.js';
import { OcularError } from '../../errors.js';
import { z } from 'zod';
import type { PipelineDeps, TaskPipeline } from '../pipeline.js';

/**
 * The `tensor` task: a model served as it is, no pre- or post-processing, for the v2 (Open Inference Protocol)
 * API only. The pipeline loads the session pool, checks that every input has a warm-up shape, and warms up at
 * batch 1 and at the stage's largest batch; v2 requests then go through the stage's tensor batcher.
 */

/** The image spec a stage needs to exist; a tensor model never receives images, so it is never used. */
const UNUSED_IMAGE_SPEC = InputSpecSchema.parse({ width: 1, height: 1 });

/** Runner-supported input types: what the worker can feed to onnxruntime. */
export const FEEDABLE_TYPES: ReadonlySet<string> = new Set(['float32', 'float64', 'int32', 'int64', 'uint8', 'int8', 'bool']);

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

function zeros(type: string, n: number): TensorFeed['data'] {
  switch (type) {
    case 'float32':
      return new Float32Array(n);
    case 'float64':
      return new Float64Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'int64':
      return new BigInt64Array(n);
    case 'int8':
      return new Int8Array(n);
    default:
      return new Uint8Array(n);
  }
}

export async function createTensorPipeline(entry: TensorEntry, deps: PipelineDeps): Promise<TaskPipeline> {
  const stageEntry: StageEntry = { ...entry, input: UNUSED_IMAGE_SPEC };
  // The first input's warm-up dims are needed before the session exists (the pool's profiled run), so they come
  // from the manifest when given; otherwise the pool's profiling falls back to the model's own dims.
  const firstGiven = entry.warmupShapes !== undefined ? Object.values(entry.warmupShapes)[0] : undefined;
  const stage = await deps.createStage('', stageEntry, {
    shapePolicy: 'fixed',
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
    const feeds: Record<string, TensorFeed> = {};
    for (const input of inputs) {
      const dims = warmupDimsOf(entry, input, n);
      feeds[input.name] = { data: zeros(input.type, dims.reduce((a, b) => a * b, 1)), dims, type: input.type };
    }
    await stage.pool.runTensors(feeds);
  };

  return {
    task: entry.task,
    stages: [stage],
    paramsSchema: z.strictObject({}),
    predict() {
      return Promise.reject(
        new OcularError('INVALID_REQUEST', `model "${entry.name}" serves raw tensors: use POST /v2/models/${entry.name}/infer`),
      );
    },
    async warmup() {
      await warmupAt(1);
      const batchDynamic = inputs.every((i) => i.shape[0] === -1);
      if (batchDynamic && stage.maxBatchSize > 1) await warmupAt(stage.maxBatchSize);
    },
  };
}
