import { resolve } from 'node:path';
import { z } from 'zod';
import type { DetectionEntry } from '../../config/manifest.js';
import { ModelCheckError, checkImageInput, checkLastDim, checkOutput } from '../../core/model-check.js';
import { OcularError } from '../../errors.js';
import { readLabels } from '../labels.js';
import { elapsedMs, prepareAndRun, shapePolicyOf, warmupStage, type PipelineDeps, type TaskPipeline } from '../pipeline.js';
import type { DetectionFilter } from './nms.js';
import { decodeSsd } from './ssd.js';
import { decodeYolox, yoloxAnchorCount } from './yolox.js';

const unit = z.coerce.number().min(0).max(1);

export const DetectionParamsSchema = z.strictObject({
  score_threshold: unit.optional(),
  iou_threshold: unit.optional(),
  max_detections: z.coerce.number().int().min(1).max(10_000).optional(),
  /** Comma-separated class labels or indices to keep. */
  classes: z.string().max(4096).optional(),
});

export async function createDetectionPipeline(entry: DetectionEntry, deps: PipelineDeps): Promise<TaskPipeline> {
  const policy = shapePolicyOf(entry.input);
  if (policy !== 'fixed') {
    throw new ModelCheckError(entry.name, 'input.resize', `detection needs a fixed input size, not ${entry.input.resize.mode}`);
  }
  const stage = await deps.createStage('', entry, { shapePolicy: policy });
  const { outputs } = stage.pool.info;
  checkImageInput(entry.name, 'input', entry.input, stage.pool.info.inputs);
  const labels = await readLabels(resolve(deps.baseDir, entry.labels));
  const { width: inputWidth, height: inputHeight } = entry.input;
  const head = entry.head;
  let decode: (o: Record<string, { data: Float32Array; dims: number[] }>, t: Parameters<typeof decodeYolox>[4], f: DetectionFilter) => ReturnType<typeof decodeYolox>;
  if (head.type === 'yolox') {
    const out = checkOutput(entry.name, 'head.output', outputs, head.output);
    checkLastDim(entry.name, 'labels', out, labels.length + 5, 'row width (5 + number of classes)');
    const rows = yoloxAnchorCount(inputWidth, inputHeight, head.strides);
    const fixedRows = out.shape[1];
    if (fixedRows !== undefined && fixedRows !== -1 && fixedRows !== rows) {
      throw new ModelCheckError(entry.name, 'head.strides', `strides give ${rows} anchors at ${inputWidth}x${inputHeight}, the model's output has ${fixedRows}`);
    }
    const cols = labels.length + 5;
    decode = (o, transform, filter) =>
      decodeYolox(o[out.name]?.data ?? new Float32Array(0), rows, cols, { inputWidth, inputHeight, strides: head.strides }, transform, filter, labels);
  } else {
    const scores = checkOutput(entry.name, 'head.scoresOutput', outputs, head.scoresOutput);
    const boxes = checkOutput(entry.name, 'head.boxesOutput', outputs, head.boxesOutput);
    checkLastDim(entry.name, 'labels', scores, labels.length, 'number of score columns (lines of the labels file, background first)');
    checkLastDim(entry.name, 'head.boxesOutput', boxes, 4, 'box coordinates');
    decode = (o, transform, filter) => {
      const s = o[scores.name];
      const b = o[boxes.name];
      if (s === undefined || b === undefined) throw new OcularError('INFERENCE_FAILED', 'detector outputs missing');
      const anchors = s.dims[1] ?? 0;
      return decodeSsd(s.data, b.data, anchors, labels.length, { inputWidth, inputHeight }, transform, filter, labels);
    };
  }

  const labelIndex = new Map(labels.map((l, i) => [l, i]));
  function classFilter(spec: string | undefined): ReadonlySet<number> | undefined {
    if (spec === undefined) return undefined;
    const set = new Set<number>();
    for (const part of spec.split(',').map((s) => s.trim()).filter((s) => s.length > 0)) {
      const byName = labelIndex.get(part);
      const asIndex = /^\d+$/.test(part) ? Number(part) : NaN;
      if (byName !== undefined) set.add(byName);
      else if (Number.isInteger(asIndex) && asIndex < labels.length) set.add(asIndex);
      else throw new OcularError('INVALID_PARAMETER', `classes: "${part.slice(0, 64)}" is neither a label nor a class index of ${entry.name}`);
    }
    return set;
  }

  return {
    task: entry.task,
    stages: [stage],
    paramsSchema: DetectionParamsSchema,
    async predict(image, rawParams, ctx) {
      const params = rawParams as z.infer<typeof DetectionParamsSchema>;
      const classes = classFilter(params.classes);
      const filter: DetectionFilter = {
        scoreThreshold: params.score_threshold ?? entry.options.scoreThreshold,
        iouThreshold: params.iou_threshold ?? entry.options.iouThreshold,
        maxDetections: params.max_detections ?? entry.options.maxDetections,
        classAgnostic: entry.options.classAgnostic,
        ...(classes !== undefined ? { classes } : {}),
      };
      const { prepared, outputs } = await prepareAndRun(stage, image, entry.input, deps, ctx);
      const t = performance.now();
      const detections = decode(outputs, prepared.transform, filter);
      ctx.timings.postprocessMs += elapsedMs(t);
      return { width: prepared.transform.originalWidth, height: prepared.transform.originalHeight, detections };
    },
    warmup: () => warmupStage(stage, entry.input, policy),
  };
}
