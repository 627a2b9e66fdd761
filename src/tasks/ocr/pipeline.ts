import { z } from 'zod';
import { nominalDims, type InputSpec } from '../../config/input-spec.js';
import type { OcrEntry } from '../../config/manifest.js';
import { bucketOf, type SizeBuckets } from '../../core/size-buckets.js';
import { ModelCheckError, checkImageInput, checkLastDim, checkOutput } from '../../core/model-check.js';
import { OcularError } from '../../errors.js';
import { readLabels } from '../labels.js';
import { throwIfAborted, warmupBuckets, warmupStage } from '../pipeline.js';
import type { ImageResult, PipelineDeps, TaskPipeline } from '../../core/task-pipeline.js';
import { recordRun, recordStage } from '../../core/tracing.js';
import { decodeImage, prepareFromDecoded } from '../../core/preprocess/image.js';
import { detectorBuckets, minRecognizerWidth, recognizerBuckets } from './buckets.js';
import { cropTextLine, resizeForRecognizer } from './crop.js';
import { ctcDecode } from './ctc.js';
import { dbPostprocess, topLeftRegion, type Quad } from './db-postprocess.js';

/**
 * PP-OCR as one model: the detector finds text regions (DB probability map -> 4-point polygons), each region is
 * cut out of the decoded image and warped upright, and the recogniser reads every line (CTC). All lines of one
 * image are queued together, so they batch on the recogniser (padded to the batch's widest, and to at least 320 as
 * PaddleOCR does: buckets.ts, minRecognizerWidth).
 *
 * Size buckets (manifest `shapeBuckets`, buckets.ts; on a GPU provider by default): the detector's batch runs at the
 * smallest bucket that holds its images' limit-round32 sizes, each image at the top-left and only its own part of the
 * probability map searched for boxes, and the detector's model is rewritten so that the padding does not move its
 * map (core/runner/region-mask.ts: its squeeze-and-excitation averages would otherwise span the padding); the
 * recogniser's batch runs at the smallest bucket width that holds its widest
 * crop. Each stage then runs at most its bucket count of sizes (Stage.shapeBound: times its batch sizes, or once
 * each where batches are padded too).
 */

export const OcrParamsSchema = z.strictObject({});

export interface OcrLine {
  text: string;
  score: number;
  polygon: Quad;
  box: { x1: number; y1: number; x2: number; y2: number };
}

export type OcrParams = z.infer<typeof OcrParamsSchema>;

export interface OcrResult extends ImageResult {
  lines: OcrLine[];
}

export type OcrPipeline = TaskPipeline<OcrParams, OcrResult>;

export async function createOcrPipeline(entry: OcrEntry, deps: PipelineDeps): Promise<OcrPipeline> {
  const det = entry.detector;
  const rec = entry.recognizer;
  if (det.input.resize.mode !== 'limit-round32' && det.input.resize.mode !== 'stretch') {
    throw new ModelCheckError(entry.name, 'detector.input.resize', `must be limit-round32 or stretch, not ${det.input.resize.mode}`);
  }
  // Both sessions are created at once (each in its own worker thread): it shortens time to ready. Both creations
  // settle before a failure is thrown, so the registry can close whichever stage did come up.
  const mode = entry.shapeBuckets.mode;
  const detBuckets = detectorBuckets(entry);
  const recBuckets = recognizerBuckets(entry);
  // Where buckets may apply, the session's first (profiled) run is a full batch at the bucket of the warm-up size:
  // a shape within the stage's bound whether or not its batches end up padded (which the profile decides).
  const recWarmWidth = Math.ceil(rec.input.width / 4);
  const profiled = (spec: InputSpec, buckets: SizeBuckets | undefined, width: number, n: number) => {
    const bucket = mode === 'off' || buckets === undefined ? undefined : bucketOf(buckets, width, spec.height);
    return bucket === undefined ? {} : { warmupDims: nominalDims({ ...spec, ...bucket }, n) };
  };
  const [detCreated, recCreated] = await Promise.allSettled([
    deps.createStage('detector', det, {
      shapePolicy: 'same-size',
      ...(detBuckets !== undefined && { sizeBuckets: { mode, ...detBuckets }, maskPadding: true }),
      ...profiled(det.input, detBuckets, det.input.width, det.batching.maxBatchSize),
    }),
    deps.createStage('recognizer', rec, {
      shapePolicy: 'pad-width',
      minTensorWidth: minRecognizerWidth(rec.input),
      sizeBuckets: { mode, ...recBuckets },
      ...profiled(rec.input, recBuckets, recWarmWidth, rec.batching.maxBatchSize),
    }),
  ]);
  if (detCreated.status === 'rejected') throw detCreated.reason;
  if (recCreated.status === 'rejected') throw recCreated.reason;
  const detStage = detCreated.value;
  const recStage = recCreated.value;
  checkImageInput(entry.name, 'detector.input', det.input, detStage.pool.info.inputs);
  const detOut = checkOutput(entry.name, 'detector', detStage.pool.info.outputs, undefined);

  checkImageInput(entry.name, 'recognizer.input', rec.input, recStage.pool.info.inputs, { dynamicWidth: true });
  const recOut = checkOutput(entry.name, 'recognizer', recStage.pool.info.outputs, undefined);
  const labels = await readLabels(await deps.resolveFile(rec.labels, rec.labelsSha256));
  checkLastDim(entry.name, 'recognizer.labels', recOut, labels.length + 2, 'number of classes (labels + blank + space)');

  const dbOptions = {
    binaryThreshold: entry.options.binaryThreshold,
    boxThreshold: entry.options.boxThreshold,
    unclipRatio: entry.options.unclipRatio,
    maxCandidates: entry.options.maxCandidates,
  };

  return {
    task: entry.task,
    stages: [detStage, recStage],
    paramsSchema: OcrParamsSchema,
    async predict(image, _params, { signal, timings }) {
      let t = performance.now();
      const decoded = await decodeImage(image, deps.limits, det.input.background);
      throwIfAborted(signal);
      const prepared = await prepareFromDecoded(decoded, det.input);
      recordStage(timings, 'preprocess', t);
      throwIfAborted(signal);

      const detRun = await detStage.run(prepared, signal);
      recordRun(timings, detRun);
      timings.queueMs += detRun.queueMs;
      timings.inferenceMs += detRun.inferenceMs;
      const map = detRun.outputs[detOut.name];
      if (map === undefined || map.dims.length !== 4) throw new OcularError('INFERENCE_FAILED', 'detector output missing');
      t = performance.now();
      // The map has the batch's size (a bucket's, where buckets apply): the image's own part is its top-left.
      const boxes = dbPostprocess(
        topLeftRegion({ data: map.data, height: map.dims[2] as number, width: map.dims[3] as number }, prepared.width, prepared.height),
        prepared.transform,
        dbOptions,
      );
      // The client may have left during detection: no crops for it (they are synchronous, so checked once).
      throwIfAborted(signal);
      const crops = boxes.map((b) =>
        resizeForRecognizer(cropTextLine(decoded, b.polygon), { height: rec.input.height, maxWidth: rec.input.width }),
      );
      recordStage(timings, 'postprocess', t);
      throwIfAborted(signal);

      const recRuns = await Promise.all(crops.map((c) => recStage.run(c, signal)));
      for (const run of recRuns) recordRun(timings, run);
      // The lines' runs overlap: report the queue and inference of the run that finished last, so that the stages
      // never add up to more than the wall time (the max queue plus the max inference of different runs can).
      const last = recRuns.reduce<(typeof recRuns)[number] | undefined>(
        (a, r) => (a === undefined || r.queueMs + r.inferenceMs > a.queueMs + a.inferenceMs ? r : a),
        undefined,
      );
      timings.queueMs += last?.queueMs ?? 0;
      timings.inferenceMs += last?.inferenceMs ?? 0;

      t = performance.now();
      const lines: OcrLine[] = [];
      recRuns.forEach((run, i) => {
        const out = run.outputs[recOut.name];
        const box = boxes[i];
        if (out === undefined || box === undefined) return;
        const [, steps, classes] = out.dims as [number, number, number];
        const { text, score } = ctcDecode(out.data, steps, classes, labels);
        if (text.trim().length === 0 || score < entry.options.minTextScore) return;
        const xs = box.polygon.map((p) => p[0]);
        const ys = box.polygon.map((p) => p[1]);
        lines.push({
          text,
          score,
          polygon: box.polygon,
          box: { x1: Math.min(...xs), y1: Math.min(...ys), x2: Math.max(...xs), y2: Math.max(...ys) },
        });
      });
      recordStage(timings, 'postprocess', t);
      return { width: decoded.width, height: decoded.height, lines };
    },
    async warmup() {
      // Each stage has its own worker thread: warm both at once. The recognizer's full batch is warmed at a quarter
      // of its widest crop, a typical line (see warmupStage); then every bucket, where buckets apply.
      await Promise.all([
        warmupStage(detStage, det.input, 'same-size').then(() => warmupBuckets(detStage, 'same-size')),
        warmupStage(recStage, rec.input, 'pad-width', recWarmWidth).then(() => warmupBuckets(recStage, 'pad-width')),
      ]);
    },
  };
}
