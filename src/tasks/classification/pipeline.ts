import { resolve } from 'node:path';
import { z } from 'zod';
import type { ClassificationEntry } from '../../config/manifest.js';
import { checkImageInput, checkLastDim, checkOutput } from '../../core/model-check.js';
import { readLabels } from '../labels.js';
import { elapsedMs, prepareAndRun, shapePolicyOf, warmupStage, type PipelineDeps, type TaskPipeline } from '../pipeline.js';
import { classify } from './postprocess.js';

export const ClassificationParamsSchema = z.strictObject({
  top_k: z.coerce.number().int().min(1).max(1000).optional(),
});

export async function createClassificationPipeline(entry: ClassificationEntry, deps: PipelineDeps): Promise<TaskPipeline> {
  const policy = shapePolicyOf(entry.input);
  const stage = await deps.createStage('', entry, { shapePolicy: policy });
  checkImageInput(entry.name, 'input', entry.input, stage.pool.info.inputs);
  const output = checkOutput(entry.name, 'output', stage.pool.info.outputs, entry.output);
  const labels = await readLabels(resolve(deps.baseDir, entry.labels));
  checkLastDim(entry.name, 'labels', output, labels.length, 'number of classes (lines of the labels file)');

  return {
    task: entry.task,
    stages: [stage],
    paramsSchema: ClassificationParamsSchema,
    async predict(image, rawParams, ctx) {
      const params = rawParams as z.infer<typeof ClassificationParamsSchema>;
      const { prepared, outputs } = await prepareAndRun(stage, image, entry.input, deps, ctx);
      const t = performance.now();
      const row = outputs[output.name]?.data ?? new Float32Array(0);
      const predictions = classify(row, labels, {
        topK: params.top_k ?? entry.options.topK,
        softmax: entry.options.softmax,
      });
      ctx.timings.postprocessMs += elapsedMs(t);
      return { width: prepared.transform.originalWidth, height: prepared.transform.originalHeight, predictions };
    },
    warmup: () => warmupStage(stage, entry.input, policy),
  };
}
