import { z } from 'zod';
import type { SegmentationEntry } from '../../config/manifest.js';
import { ModelCheckError, checkOutput } from '../../core/model-check.js';
import { OcularError } from '../../errors.js';
import { parseClassList, loadLabels } from '../labels.js';
import { createImageStage, prepareAndRunAll, shapePolicyOf, throwIfAborted, warmupStage } from '../pipeline.js';
import type { ImageResult, PipelineDeps, PredictContext, TaskPipeline } from '../../core/task-pipeline.js';
import { recordStage } from '../../core/tracing.js';
import type { MaskBuilder } from './mask-pool.js';
import type { MaskFormat, MaskJob } from './mask.js';

export const SegmentationParamsSchema = z.strictObject({
  /** rle (default): JSON with a COCO RLE mask per class; png: the class map as a single-channel PNG. */
  format: z.enum(['rle', 'png']).optional(),
  /** Comma-separated class labels or indices to answer. */
  classes: z.string().max(4096).optional(),
  /** Classes covering fewer pixels than this (at the original size) are left out. */
  min_area: z.coerce.number().int().min(0).max(2 ** 31).optional(),
});

export type SegmentationParams = z.infer<typeof SegmentationParamsSchema>;

export interface SegmentedClass {
  label: string;
  index: number;
  /** Pixels of the class at the original (EXIF-upright) size. */
  area: number;
  /** area / (width * height). */
  fraction: number;
  /** The class's pixels' box, x2/y2 exclusive. */
  box: { x1: number; y1: number; x2: number; y2: number };
  /** COCO RLE (pycocotools' compressed string, column-major); absent in the PNG answer. */
  mask?: { size: [number, number]; counts: string };
}

export interface SegmentationResult extends ImageResult {
  classes: SegmentedClass[];
  /** format=png only: the class map, pixel = class index, `voidValue` where a class was left out. */
  png?: { data: Buffer; voidValue: number };
}

export type SegmentationPipeline = TaskPipeline<SegmentationParams, SegmentationResult>;

/** What the segmentation task needs beyond the registry's deps: the mask threads and the answer-size limit. */
export interface SegmentationServices {
  masks: MaskBuilder;
  maxResponseBytes: number;
}

/** JSON bytes of a class besides its counts string: a bound, so that the answer's size is known before it is written. */
const CLASS_OVERHEAD_BYTES = 256;

export async function createSegmentationPipeline(
  entry: SegmentationEntry,
  deps: PipelineDeps,
  services: SegmentationServices,
): Promise<SegmentationPipeline> {
  const policy = shapePolicyOf(entry.input);
  if (policy !== 'fixed') {
    throw new ModelCheckError(entry.name, 'input.resize', `segmentation needs a fixed input size, not ${entry.input.resize.mode}`);
  }
  const stage = await createImageStage(entry, deps, policy);
  const output = checkOutput(entry.name, 'output.name', stage.pool.info.outputs, entry.output.name);
  const labels = await loadLabels(entry.name, 'labels', entry, stage, deps);
  const layout = entry.output.layout;
  const shape = output.shape;
  const classDim = layout === 'NHWC' ? shape[3] : layout === 'NCHW' ? shape[1] : shape.length === 4 ? shape[1] : 1;
  const rankOk = layout === 'class-map' ? shape.length === 3 || (shape.length === 4 && (shape[1] === 1 || shape[1] === -1)) : shape.length === 4;
  if (!rankOk) {
    throw new ModelCheckError(entry.name, 'output.layout', `${layout} needs an output of rank ${layout === 'class-map' ? '3 ([N,H,W]) or 4 ([N,1,H,W])' : '4'}; "${output.name}" is [${shape.join(',')}]`);
  }
  if (layout !== 'class-map' && classDim !== -1 && classDim !== labels.length) {
    throw new ModelCheckError(entry.name, 'labels', `${labels.length} labels, but the ${layout} output "${output.name}" has ${classDim} classes`);
  }
  if (labels.length > 65534) throw new ModelCheckError(entry.name, 'labels', `${labels.length} labels: a class map holds at most 65534 classes`);
  if (layout === 'class-map' && entry.options.upsample === 'bilinear') {
    throw new ModelCheckError(entry.name, 'options.upsample', 'a class-map output has no logits to interpolate: use nearest');
  }

  async function predict(image: Buffer, params: SegmentationParams, ctx: PredictContext): Promise<SegmentationResult> {
    const keep = params.classes === undefined ? undefined : [...parseClassList(params.classes, labels, entry.name)];
    const format: MaskFormat = params.format ?? 'rle';
    const [run] = await prepareAndRunAll(stage, [image], entry.input, deps, ctx);
    const { prepared, outputs } = run as NonNullable<typeof run>;
    const out = outputs[output.name];
    if (out === undefined) throw new OcularError('INFERENCE_FAILED', `the model did not produce output ${output.name}`);
    throwIfAborted(ctx.signal);
    const t = performance.now();
    const { originalWidth: width, originalHeight: height } = prepared.transform;
    const budget = ctx.answerBytes;
    const maxBytes = Math.min(services.maxResponseBytes, budget?.left ?? Infinity);
    const job: MaskJob = {
      // A copy the thread owns: `out` is a view into the batch's buffer, shared with the other requests of the batch.
      data: out.data.slice(),
      dims: out.dims,
      layout,
      classCount: labels.length,
      upsample: entry.options.upsample,
      inputWidth: entry.input.width,
      inputHeight: entry.input.height,
      ...prepared.transform,
      keep,
      minArea: params.min_area ?? entry.options.minArea,
      format,
      maxBytes,
    };
    const mask = await services.masks.build(job, ctx.signal);
    const pixels = width * height;
    const classes: SegmentedClass[] = mask.classes.map((c) => ({
      label: labels[c.index] ?? String(c.index),
      index: c.index,
      area: c.area,
      fraction: c.area / pixels,
      box: c.box,
      ...(c.counts !== undefined ? { mask: { size: [height, width] as [number, number], counts: c.counts } } : {}),
    }));
    const bytes =
      mask.png !== undefined ? mask.png.byteLength : classes.reduce((n, c) => n + CLASS_OVERHEAD_BYTES + c.label.length * 6 + (c.mask?.counts.length ?? 0), 0);
    // The room is read again now, and taken in the same turn: another file of this answer, built at the same time,
    // may have taken its share while this one's masks were built (`maxBytes` above only bounds the thread's work).
    const room = Math.min(services.maxResponseBytes, budget?.left ?? Infinity);
    if (bytes > room) {
      throw new OcularError('RESPONSE_TOO_LARGE', `the masks would take up to ${bytes} bytes, over the ${room} this answer may still take (OCULAR_MAX_RESPONSE_BYTES)`);
    }
    if (budget !== undefined) budget.left -= bytes;
    recordStage(ctx.timings, 'postprocess', t);
    return {
      width,
      height,
      classes,
      ...(mask.png !== undefined ? { png: { data: Buffer.from(mask.png.buffer, mask.png.byteOffset, mask.png.byteLength), voidValue: mask.voidValue } } : {}),
    };
  }

  return {
    task: entry.task,
    stages: [stage],
    labels,
    paramsSchema: SegmentationParamsSchema,
    predict,
    async warmup() {
      await warmupStage(stage, entry.input, policy);
      // A one-pixel mask: a mask thread starts (and loads its code) before the model is READY, not on the first request.
      const C = labels.length;
      const dims = layout === 'NHWC' ? [1, 1, 1, C] : layout === 'NCHW' ? [1, C, 1, 1] : [1, 1, 1];
      const one = { originalWidth: 1, originalHeight: 1, scaleX: 1, scaleY: 1, offsetX: 0, offsetY: 0 };
      await services.masks.build({
        data: new Float32Array(layout === 'class-map' ? 1 : C),
        dims,
        layout,
        classCount: C,
        upsample: entry.options.upsample,
        inputWidth: 1,
        inputHeight: 1,
        ...one,
        keep: undefined,
        minArea: 0,
        format: 'rle',
        maxBytes: services.maxResponseBytes,
      });
    },
  };
}
