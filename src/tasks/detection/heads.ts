/**
 * From a detection entry's `head` and the model's outputs to one decoder: the outputs are found and their shapes
 * checked against the head and the labels at startup (a wrong head fails loading, naming the model and the field),
 * and the decoder reads one image's outputs into detections in original-image pixels.
 */
import type { DetectionEntry, DetectionHead } from '../../config/manifest.js';
import { ModelCheckError, checkLastDim, checkOutput } from '../../core/model-check.js';
import type { ImageTransform, OutputTensor, Outputs, TensorMeta } from '../../core/types.js';
import { OcularError } from '../../errors.js';
import { decodeDetr } from './detr.js';
import { decodeEnd2end, decodeRows } from './end2end.js';
import type { Detection, DetectionFilter } from './nms.js';
import { decodeSsd } from './ssd.js';
import { decodeDense } from './yolo.js';
import { decodeYolox, yoloxAnchorCount } from './yolox.js';

/** Reads one image's outputs (dims [1, ...] or without a batch dim) into detections. */
export type HeadDecoder = (outputs: Outputs, transform: ImageTransform, filter: DetectionFilter) => Detection[];

interface HeadContext {
  model: string;
  outputs: readonly TensorMeta[];
  labels: readonly string[];
  inputWidth: number;
  inputHeight: number;
}

function tensorOf(outputs: Outputs, name: string): OutputTensor {
  const t = outputs[name];
  if (t === undefined) throw new OcularError('INFERENCE_FAILED', `detector output "${name}" missing`);
  return t;
}

function checkRank(model: string, field: string, out: TensorMeta, ranks: readonly number[]): void {
  if (!ranks.includes(out.shape.length)) {
    throw new ModelCheckError(model, field, `the model's output "${out.name}" has rank ${out.shape.length} ([${out.shape.join(',')}]), this head reads rank ${ranks.join(' or ')}`);
  }
}

/**
 * Which axis of an Ultralytics output `[N, d1, d2]` holds the 4 + C values: the manifest's layout, checked, or with
 * 'auto' the one axis of that size. Refused when both axes could be it or neither is fixed.
 */
export function ultralyticsLayout(model: string, out: TensorMeta, numClasses: number, layout: 'auto' | 'channels-first' | 'anchors-first'): 'channels-first' | 'anchors-first' {
  checkRank(model, 'head.output', out, [3]);
  const width = 4 + numClasses;
  const d1 = out.shape[1] as number;
  const d2 = out.shape[2] as number;
  const shape = `[${out.shape.join(',')}]`;
  const fits = (d: number): boolean => d === width || d === -1;
  if (layout !== 'auto') {
    const d = layout === 'channels-first' ? d1 : d2;
    if (!fits(d)) {
      throw new ModelCheckError(model, 'labels', `${layout} puts the 4 + ${numClasses} box and class values on an axis of ${d} in the model's output "${out.name}" ${shape}`);
    }
    return layout;
  }
  if (d1 === width && d2 === width) {
    throw new ModelCheckError(model, 'head.layout', `the output "${out.name}" ${shape} has 4 + ${numClasses} on both axes; set head.layout`);
  }
  if (d1 === width || (d1 === -1 && d2 !== -1)) return 'channels-first';
  if (d2 === width || (d2 === -1 && d1 !== -1)) return 'anchors-first';
  throw new ModelCheckError(
    model,
    'labels',
    d1 === -1 && d2 === -1
      ? `the output "${out.name}" ${shape} is dynamic on both axes; set head.layout`
      : `${numClasses} labels give rows of 4 + ${numClasses} values, the model's output "${out.name}" ${shape} has none`,
  );
}

/** Checks the head against the model's outputs and returns its decoder. */
export function createHeadDecoder(entry: DetectionEntry, outputs: readonly TensorMeta[], labels: readonly string[]): HeadDecoder {
  const ctx: HeadContext = { model: entry.name, outputs, labels, inputWidth: entry.input.width, inputHeight: entry.input.height };
  const head: DetectionHead = entry.head;
  switch (head.type) {
    case 'yolox':
      return yoloxDecoder(ctx, head);
    case 'ssd':
      return ssdDecoder(ctx, head);
    case 'ultralytics':
    case 'yolov5':
      return denseDecoder(ctx, head);
    case 'end2end':
      return end2endDecoder(ctx, head);
    case 'boxes-scores-classes':
      return rowsDecoder(ctx, head);
    case 'detr':
      return detrDecoder(ctx, head);
  }
}

function yoloxDecoder(ctx: HeadContext, head: Extract<DetectionHead, { type: 'yolox' }>): HeadDecoder {
  const { model, labels, inputWidth, inputHeight } = ctx;
  const out = checkOutput(model, 'head.output', ctx.outputs, head.output);
  checkLastDim(model, 'labels', out, labels.length + 5, 'row width (5 + number of classes)');
  const rows = yoloxAnchorCount(inputWidth, inputHeight, head.strides);
  const fixedRows = out.shape[1];
  if (fixedRows !== undefined && fixedRows !== -1 && fixedRows !== rows) {
    throw new ModelCheckError(model, 'head.strides', `strides give ${rows} anchors at ${inputWidth}x${inputHeight}, the model's output has ${fixedRows}`);
  }
  const cols = labels.length + 5;
  const opts = { inputWidth, inputHeight, strides: head.strides };
  return (o, transform, filter) => decodeYolox(tensorOf(o, out.name).data, rows, cols, opts, transform, filter, labels);
}

function ssdDecoder(ctx: HeadContext, head: Extract<DetectionHead, { type: 'ssd' }>): HeadDecoder {
  const { model, labels, inputWidth, inputHeight } = ctx;
  const scores = checkOutput(model, 'head.scoresOutput', ctx.outputs, head.scoresOutput);
  const boxes = checkOutput(model, 'head.boxesOutput', ctx.outputs, head.boxesOutput);
  checkLastDim(model, 'labels', scores, labels.length, 'number of score columns (lines of the labels file, background first)');
  checkLastDim(model, 'head.boxesOutput', boxes, 4, 'box coordinates');
  return (o, transform, filter) => {
    const s = tensorOf(o, scores.name);
    const anchors = s.dims[1] ?? 0;
    return decodeSsd(s.data, tensorOf(o, boxes.name).data, anchors, labels.length, { inputWidth, inputHeight }, transform, filter, labels);
  };
}

function denseDecoder(ctx: HeadContext, head: Extract<DetectionHead, { type: 'ultralytics' | 'yolov5' }>): HeadDecoder {
  const { model, labels } = ctx;
  const out = checkOutput(model, 'head.output', ctx.outputs, head.output);
  const numClasses = labels.length;
  const objectness = head.type === 'yolov5';
  let channelsFirst = false;
  if (head.type === 'ultralytics') {
    channelsFirst = ultralyticsLayout(model, out, numClasses, head.layout) === 'channels-first';
  } else {
    checkRank(model, 'head.output', out, [3]);
    checkLastDim(model, 'labels', out, numClasses + 5, 'row width (4 box values, objectness and the classes)');
  }
  const width = (objectness ? 5 : 4) + numClasses;
  return (o, transform, filter) => {
    const t = tensorOf(o, out.name);
    const [, d1 = 0, d2 = 0] = t.dims;
    const [values, anchors] = channelsFirst ? [d1, d2] : [d2, d1];
    if (values !== width) throw new OcularError('INFERENCE_FAILED', `output "${out.name}" has dims [${t.dims.join(',')}], expected ${width} values per anchor`);
    return decodeDense(t.data, { anchors, numClasses, objectness, channelsFirst }, transform, filter, labels);
  };
}

function end2endDecoder(ctx: HeadContext, head: Extract<DetectionHead, { type: 'end2end' }>): HeadDecoder {
  const { model, labels, inputWidth, inputHeight } = ctx;
  const out = checkOutput(model, 'head.output', ctx.outputs, head.output);
  checkRank(model, 'head.output', out, [2, 3]);
  checkLastDim(model, 'head.output', out, 6, 'row width (x1, y1, x2, y2, score, class)');
  const opts = { numClasses: labels.length, nms: head.nms };
  return (o, transform, filter) => decodeEnd2end(tensorOf(o, out.name).data, inputWidth, inputHeight, opts, transform, filter, labels);
}

function rowsDecoder(ctx: HeadContext, head: Extract<DetectionHead, { type: 'boxes-scores-classes' }>): HeadDecoder {
  const { model, labels, inputWidth, inputHeight } = ctx;
  const boxes = checkOutput(model, 'head.boxesOutput', ctx.outputs, head.boxesOutput);
  const scores = checkOutput(model, 'head.scoresOutput', ctx.outputs, head.scoresOutput);
  let classesName = head.classesOutput;
  if (classesName === undefined) {
    classesName = ['classes', 'labels'].find((n) => ctx.outputs.some((m) => m.name === n));
    if (classesName === undefined) {
      throw new ModelCheckError(model, 'head.classesOutput', `the model has no output "classes" or "labels" (outputs: ${ctx.outputs.map((m) => m.name).join(', ')}); name it`);
    }
  }
  const classes = checkOutput(model, 'head.classesOutput', ctx.outputs, classesName);
  const count = head.countOutput === undefined ? undefined : checkOutput(model, 'head.countOutput', ctx.outputs, head.countOutput);
  checkLastDim(model, 'head.boxesOutput', boxes, 4, 'box coordinates');
  const reading = { boxFormat: head.boxFormat, normalized: head.normalized, inputWidth, inputHeight };
  const opts = { numClasses: labels.length, classOffset: head.classOffset, nms: head.nms };
  return (o, transform, filter) => {
    const b = tensorOf(o, boxes.name).data;
    let rows = Math.floor(b.length / 4);
    if (count !== undefined) {
      const n = tensorOf(o, count.name).data[0];
      // A count that is not a number of rows reads as none; more than the rows there are reads as all of them.
      rows = n !== undefined && n >= 0 ? Math.min(rows, Math.floor(n)) : 0;
    }
    return decodeRows(b, tensorOf(o, scores.name).data, tensorOf(o, classes.name).data, rows, reading, opts, transform, filter, labels);
  };
}

function detrDecoder(ctx: HeadContext, head: Extract<DetectionHead, { type: 'detr' }>): HeadDecoder {
  const { model, labels, inputWidth, inputHeight } = ctx;
  const numClasses = labels.length;
  const columns = head.scores === 'softmax' ? numClasses + 1 : numClasses;
  const what = head.scores === 'softmax' ? `${numClasses} classes and "no object"` : `${numClasses} classes`;
  const base = { numClasses, scores: head.scores, nms: head.nms, inputWidth, inputHeight };
  const twoOutputs = head.boxesOutput !== undefined || head.logitsOutput !== undefined;
  if (twoOutputs) {
    if (head.boxesOutput === undefined || head.logitsOutput === undefined || head.output !== undefined) {
      throw new ModelCheckError(model, 'head', 'name either output (one tensor of boxes and logits) or both boxesOutput and logitsOutput');
    }
    const boxes = checkOutput(model, 'head.boxesOutput', ctx.outputs, head.boxesOutput);
    const logits = checkOutput(model, 'head.logitsOutput', ctx.outputs, head.logitsOutput);
    checkLastDim(model, 'head.boxesOutput', boxes, 4, 'box coordinates (cx, cy, w, h)');
    checkLastDim(model, 'labels', logits, columns, `logits per query (${what})`);
    return (o, transform, filter) => {
      const b = tensorOf(o, boxes.name).data;
      const l = tensorOf(o, logits.name).data;
      const queries = Math.floor(b.length / 4);
      if (l.length !== queries * columns) throw new OcularError('INFERENCE_FAILED', `detector outputs hold ${queries} boxes and ${l.length / columns} logit rows`);
      const views = { boxes: b, boxStride: 4, logits: l, logitOffset: 0, logitStride: columns };
      return decodeDetr(views, { ...base, queries }, transform, filter, labels);
    };
  }
  const out = checkOutput(model, 'head.output', ctx.outputs, head.output);
  checkRank(model, 'head.output', out, [2, 3]);
  checkLastDim(model, 'labels', out, columns + 4, `row width (4 box values and the logits of ${what})`);
  const width = columns + 4;
  return (o, transform, filter) => {
    const d = tensorOf(o, out.name).data;
    const views = { boxes: d, boxStride: width, logits: d, logitOffset: 4, logitStride: width };
    return decodeDetr(views, { ...base, queries: Math.floor(d.length / width) }, transform, filter, labels);
  };
}
