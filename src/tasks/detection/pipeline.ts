import { z } from 'zod';
import type { DetectionEntry } from '../../config/manifest.js';
import { ModelCheckError } from '../../core/model-check.js';
import { parseClassList, loadLabels } from '../labels.js';
import { createImageStage, predictImage, shapePolicyOf, warmupStage } from '../pipeline.js';
import type { ImageResult, PipelineDeps, TaskPipeline } from '../../core/task-pipeline.js';
import type { Detection, DetectionFilter } from './nms.js';
import { createHeadDecoder } from './heads.js';

const unit = z.coerce.number().min(0).max(1);

export const DetectionParamsSchema = z.strictObject({
  score_threshold: unit.optional(),
  iou_threshold: unit.optional(),
  max_detections: z.coerce.number().int().min(1).max(10_000).optional(),
  /** Comma-separated class labels or indices to keep. */
  classes: z.string().max(4096).optional(),
});

export type DetectionParams = z.infer<typeof DetectionParamsSchema>;

export interface DetectionResult extends ImageResult {
  detections: Detection[];
}

export type DetectionPipeline = TaskPipeline<DetectionParams, DetectionResult>;

export async function createDetectionPipeline(entry: DetectionEntry, deps: PipelineDeps): Promise<DetectionPipeline> {
  const policy = shapePolicyOf(entry.input);
  if (policy !== 'fixed') {
    throw new ModelCheckError(entry.name, 'input.resize', `detection needs a fixed input size, not ${entry.input.resize.mode}`);
  }
  const stage = await createImageStage(entry, deps, policy);
  const { outputs } = stage.pool.info;
  const labels = await loadLabels(entry.name, 'labels', entry, stage, deps);
  const decode = createHeadDecoder(entry, outputs, labels);

  return {
    task: entry.task,
    stages: [stage],
    labels,
    paramsSchema: DetectionParamsSchema,
    async predict(image, params, ctx) {
      const classes = params.classes === undefined ? undefined : parseClassList(params.classes, labels, entry.name);
      const filter: DetectionFilter = {
        scoreThreshold: params.score_threshold ?? entry.options.scoreThreshold,
        iouThreshold: params.iou_threshold ?? entry.options.iouThreshold,
        maxDetections: params.max_detections ?? entry.options.maxDetections,
        classAgnostic: entry.options.classAgnostic,
        ...(classes !== undefined ? { classes } : {}),
      };
      return predictImage(stage, image, entry.input, deps, ctx, (outputs, transform) => ({
        detections: decode(outputs, transform, filter),
      }));
    },
    warmup: () => warmupStage(stage, entry.input, policy),
  };
}
