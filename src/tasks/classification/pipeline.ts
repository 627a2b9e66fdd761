import { z } from 'zod';
import type { ClassificationEntry } from '../../config/manifest.js';
import { checkLastDim, checkOutput } from '../../core/model-check.js';
import { loadLabels } from '../labels.js';
import { createImageStage, predictImage, shapePolicyOf, warmupStage } from '../pipeline.js';
import type { ImageResult, PipelineDeps, TaskPipeline } from '../../core/task-pipeline.js';
import { classify, type Classification } from './postprocess.js';

export const ClassificationParamsSchema = z.strictObject({
  top_k: z.coerce.number().int().min(1).max(1000).optional(),
});

export type ClassificationParams = z.infer<typeof ClassificationParamsSchema>;

export interface ClassificationResult extends ImageResult {
  predictions: Classification[];
}

export type ClassificationPipeline = TaskPipeline<ClassificationParams, ClassificationResult>;

export async function createClassificationPipeline(entry: ClassificationEntry, deps: PipelineDeps): Promise<ClassificationPipeline> {
  const policy = shapePolicyOf(entry.input);
  const stage = await createImageStage(entry, deps, policy);
  const output = checkOutput(entry.name, 'output', stage.pool.info.outputs, entry.output);
  const labels = await loadLabels(entry.name, 'labels', entry, stage, deps);
  checkLastDim(entry.name, 'labels', output, labels.length, 'number of classes (lines of the labels file)');

  return {
    task: entry.task,
    stages: [stage],
    labels,
    paramsSchema: ClassificationParamsSchema,
    predict: (image, params, ctx) =>
      predictImage(stage, image, entry.input, deps, ctx, (outputs) => ({
        predictions: classify(outputs[output.name]?.data ?? new Float32Array(0), labels, {
          topK: params.top_k ?? entry.options.topK,
          softmax: entry.options.softmax,
        }),
      })),
    warmup: () => warmupStage(stage, entry.input, policy),
  };
}
