import type { ModelEntry } from '../config/manifest.js';
import type { PipelineDeps, PipelineFactory, TaskPipeline } from '../core/task-pipeline.js';
import { createClassificationPipeline, type ClassificationPipeline } from './classification/pipeline.js';
import { createDetectionPipeline, type DetectionPipeline } from './detection/pipeline.js';
import { createOcrPipeline, type OcrPipeline } from './ocr/pipeline.js';
import { createSegmentationPipeline, type SegmentationPipeline, type SegmentationServices } from './segmentation/pipeline.js';
import { createTensorPipeline, type TensorPipeline } from './tensor/pipeline.js';

type ParamsOf<T> = T extends TaskPipeline<infer P> ? P : never;
type ResultOf<T> = T extends TaskPipeline<unknown, infer R> ? R : never;

type AnyTask = ClassificationPipeline | DetectionPipeline | SegmentationPipeline | OcrPipeline | TensorPipeline;

/**
 * What the registry stores for every model: a pipeline whose params and results are the union of the tasks'. The
 * routes parse a query with the model's own paramsSchema and hand it back to the same pipeline.
 */
export type ServedPipeline = TaskPipeline<ParamsOf<AnyTask>, ResultOf<AnyTask>>;

/** What tasks use beyond the registry's deps, owned by plugins: the segmentation task's mask threads and limit. */
export type TaskServices = SegmentationServices;

/**
 * The task factory the entry hands the registry: a manifest entry's task picks its pipeline. `services` are the
 * app's (src/plugins/postprocessing.ts owns the mask threads).
 */
export function createTaskPipeline(services: TaskServices): PipelineFactory<ServedPipeline> {
  return (entry: ModelEntry, deps: PipelineDeps): Promise<ServedPipeline> => {
    switch (entry.task) {
      case 'image-classification':
        return createClassificationPipeline(entry, deps);
      case 'object-detection':
        return createDetectionPipeline(entry, deps);
      case 'semantic-segmentation':
        return createSegmentationPipeline(entry, deps, services);
      case 'ocr':
        return createOcrPipeline(entry, deps);
      case 'tensor':
        return createTensorPipeline(entry, deps);
    }
  };
}
