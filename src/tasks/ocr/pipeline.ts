import { resolve } from 'node:path';
import { z } from 'zod';
import type { OcrEntry } from '../../config/manifest.js';
import { ModelCheckError, checkImageInput, checkLastDim, checkOutput } from '../../core/model-check.js';
import { OcularError } from '../../errors.js';
import { readLabels } from '../labels.js';
import { elapsedMs, throwIfAborted, warmupStage, type PipelineDeps, type TaskPipeline } from '../pipeline.js';
import { decodeImage, prepareFromDecoded } from '../preprocess/image.js';
import { cropTextLine, resizeForRecognizer } from './crop.js';
import { ctcDecode } from './ctc.js';
import { dbPostprocess, type Quad } from './db-postprocess.js';

/**
 * PP-OCR as one model: the detector finds text regions (DB probability map -> 4-point polygons), each region is
 * cut out of the decoded image and warped upright, and the recogniser reads every line (CTC). All lines of one
 * image are queued together, so they batch on the recogniser (padded to the batch's widest).
 */

export const OcrParamsSchema = z.strictObject({});

export interface OcrLine {
  text: string;
  score: number;
  polygon: Quad;
  box: { x1: number; y1: number; x2: number; y2: number };
}

export async function createOcrPipeline(entry: OcrEntry, deps: PipelineDeps): Promise<TaskPipeline> {
  const det = entry.detector;
  const rec = entry.recognizer;
  if (det.input.resize.mode !== 'limit-round32' && det.input.resize.mode !== 'stretch') {
    throw new ModelCheckError(entry.name, 'detector.input.resize', `must be limit-round32 or stretch, not ${det.input.resize.mode}`);
  }
  // Both sessions are created at once (each in its own worker thread): it shortens time to ready. Both creations
  // settle before a failure is thrown, so the registry can close whichever stage did come up.
  const [detCreated, recCreated] = await Promise.allSettled([
    deps.createStage('detector', det, { shapePolicy: 'same-size' }),
    deps.createStage('recognizer', rec, { shapePolicy: 'pad-width' }),
  ]);
  if (detCreated.status === 'rejected') throw detCreated.reason;
  if (recCreated.status === 'rejected') throw recCreated.reason;
  const detStage = detCreated.value;
  const recStage = recCreated.value;
  checkImageInput(entry.name, 'detector.input', det.input, detStage.pool.info.inputs);
  const detOut = checkOutput(entry.name, 'detector', detStage.pool.info.outputs, undefined);

  checkImageInput(entry.name, 'recognizer.input', rec.input, recStage.pool.info.inputs, { dynamicWidth: true });
  const recOut = checkOutput(entry.name, 'recognizer', recStage.pool.info.outputs, undefined);
  const labels = await readLabels(resolve(deps.baseDir, rec.labels));
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
      const prepared = await prepareFromDecoded(decoded, det.input);
      timings.preprocessMs += elapsedMs(t);
      throwIfAborted(signal);

      const detRun = await detStage.run(prepared, signal);
      timings.queueMs += detRun.queueMs;
      timings.inferenceMs += detRun.inferenceMs;
      const map = detRun.outputs[detOut.name];
      if (map === undefined || map.dims.length !== 4) throw new OcularError('INFERENCE_FAILED', 'detector output missing');
      t = performance.now();
      const boxes = dbPostprocess(
        { data: map.data, height: map.dims[2] as number, width: map.dims[3] as number },
        prepared.transform,
        dbOptions,
      );
      const crops = boxes.map((b) =>
        resizeForRecognizer(cropTextLine(decoded, b.polygon), { height: rec.input.height, maxWidth: rec.input.width }),
      );
      timings.postprocessMs += elapsedMs(t);
      throwIfAborted(signal);

      const recRuns = await Promise.all(crops.map((c) => recStage.run(c, signal)));
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
      timings.postprocessMs += elapsedMs(t);
      return { width: decoded.width, height: decoded.height, lines };
    },
    async warmup() {
      // Each stage has its own worker thread: warm both at once. The recognizer's full batch is warmed at a quarter
      // of its widest crop, a typical line (see warmupStage).
      await Promise.all([
        warmupStage(detStage, det.input, 'same-size'),
        warmupStage(recStage, rec.input, 'pad-width', Math.ceil(rec.input.width / 4)),
      ]);
    },
  };
}
