import { parseClassNames } from './model-metadata.js';
import { ModelCheckError } from './model-check.js';
import type { TensorMeta } from './types.js';

/**
 * Recognises what an ONNX model is from its inputs' and outputs' shapes, types and names, and the metadata its
 * exporter wrote: the task, the detection head (the manifest's `head.type` names), the image input's layout, batch
 * dimension and size, and how sure it is. models:inspect prints it and drafts a manifest entry from it; the server
 * refuses, at startup, exports it recognises and does not serve (rejectUnsupportedExport).
 *
 * Confidence: 'high' where the shapes (or the exporter's own metadata) admit one reading; 'medium' where one reading
 * is much likelier than the others (said in `reasons`); 'low' for a guess. The rules know the exports of
 * Ultralytics (YOLOv5/v8/11, with or without NMS), YOLOX, YOLOv10, SSD-style and TensorFlow/torchvision detection
 * exports, DETR/RT-DETR, torchvision/timm classifiers, DeepLab-style segmenters and PaddleOCR's DB detector and CTC
 * recogniser.
 */

export type Confidence = 'high' | 'medium' | 'low';

export const HEAD_TYPES = ['yolox', 'ssd', 'ultralytics', 'yolov5', 'end2end', 'boxes-scores-classes', 'detr'] as const;
export type HeadType = (typeof HEAD_TYPES)[number];

export type RecognisedKind =
  | 'image-classification'
  | 'object-detection'
  | 'semantic-segmentation'
  | 'ocr-detection'
  | 'ocr-recognition'
  | 'instance-segmentation'
  | 'pose'
  | 'oriented-detection'
  | 'unknown';

/** Kinds Ocular recognises and does not serve: loading one fails at startup. */
const UNSUPPORTED: ReadonlySet<RecognisedKind> = new Set(['instance-segmentation', 'pose', 'oriented-detection']);

export interface ImageInputGuess {
  name: string;
  type: string;
  /** Where the channels are; rank-3 inputs have no batch dimension (batch: 'none'). */
  layout: 'NCHW' | 'NHWC';
  batch: 'dynamic' | 'none' | number;
  /** Fixed in the model, or given by the exporter's metadata (`imgsz`) where the model's are dynamic. */
  width: number | undefined;
  height: number | undefined;
  sizeFrom: 'model' | 'metadata' | undefined;
  /** Whether the layout was read from a dimension of 3 (else assumed). */
  layoutKnown: boolean;
}

export interface HeadGuess {
  type: HeadType;
  /** Output names by role: `output` for one-output heads; boxes, scores, classes, numDetections, logits. */
  outputs: Record<string, string>;
  /** ultralytics: whether the anchors are the last dimension ([N, 4+C, A]) or the middle one ([N, A, 4+C]). */
  anchorsLast?: boolean;
}

export interface Recognition {
  kind: RecognisedKind;
  supported: boolean;
  confidence: Confidence;
  head?: HeadGuess;
  /** Number of classes where the shapes (or the metadata's names) tell it. */
  classes?: number;
  /** Segmentation: where the classes are in the output. */
  outputLayout?: 'NCHW' | 'NHWC' | 'class-map';
  input?: ImageInputGuess;
  /** Inputs other than the image (RT-DETR's orig_target_sizes, ...). */
  otherInputs: string[];
  /** Class names from the metadata (`names`), index = class. */
  labels?: string[];
  /** Why: one line per rule that decided, in the order they applied. */
  reasons: string[];
}

export interface ModelFacts {
  inputs: readonly TensorMeta[];
  outputs: readonly TensorMeta[];
  metadata?: Readonly<Record<string, string>>;
  /** Operator types of the graph (with counts), where known: a NonMaxSuppression node marks an end-to-end model. */
  ops?: Readonly<Record<string, number>>;
  producerName?: string;
}

const fixed = (d: number | undefined): d is number => d !== undefined && d > 0;

/** The class names a model's `names` metadata holds, or undefined where it holds none readable (core/model-metadata.ts). */
export function parseMetadataNames(text: string): string[] | undefined {
  try {
    const names = parseClassNames(text);
    return names.length > 0 ? names : undefined;
  } catch {
    return undefined;
  }
}

/** Ultralytics' `imgsz` ("[640, 640]", height then width, or one number): [height, width]. */
export function parseMetadataSize(text: string | undefined): [number, number] | undefined {
  if (text === undefined) return undefined;
  const nums = text.match(/\d+/g)?.map(Number) ?? [];
  if (nums.length === 1 && (nums[0] as number) > 0) return [nums[0] as number, nums[0] as number];
  if (nums.length === 2 && nums.every((n) => n > 0)) return [nums[0] as number, nums[1] as number];
  return undefined;
}

/** Anchor points of a grid per stride over a height x width input (YOLOX, YOLOv8: one per cell). */
function gridPoints(height: number, width: number, strides: readonly number[]): number {
  return strides.reduce((sum, s) => sum + Math.ceil(height / s) * Math.ceil(width / s), 0);
}

function imageInputOf(inputs: readonly TensorMeta[], metadata: Readonly<Record<string, string>>): ImageInputGuess | undefined {
  const candidates = inputs.filter((i) => i.shape.length === 3 || i.shape.length === 4);
  const image =
    candidates.find((i) => i.shape.includes(3)) ?? candidates.find((i) => /image|pixel|input|^x$/i.test(i.name)) ?? candidates[0];
  if (image === undefined) return undefined;
  const s = image.shape;
  const batched = s.length === 4;
  const dims = batched ? s.slice(1) : s;
  const [a, , c] = dims as [number, number, number];
  // Channels first unless only the last dim is 3 (TensorFlow exports) or the first is clearly spatial.
  const nhwc = (c === 3 && a !== 3) || (a > 4 && !fixed(c));
  const layoutKnown = a === 3 || c === 3;
  const [h, w] = nhwc ? [dims[0], dims[1]] : [dims[1], dims[2]];
  let width = fixed(w) ? w : undefined;
  let height = fixed(h) ? h : undefined;
  let sizeFrom: ImageInputGuess['sizeFrom'] = width !== undefined && height !== undefined ? 'model' : undefined;
  const meta = parseMetadataSize(metadata['imgsz']);
  if (sizeFrom === undefined && meta !== undefined) {
    [height, width] = meta;
    sizeFrom = 'metadata';
  }
  const n = s[0] as number;
  return {
    name: image.name,
    type: image.type,
    layout: nhwc ? 'NHWC' : 'NCHW',
    batch: batched ? (fixed(n) ? n : 'dynamic') : 'none',
    width,
    height,
    sizeFrom,
    layoutKnown,
  };
}

const isInt = (t: string): boolean => /^u?int(8|16|32|64)$/.test(t);
const findName = (outputs: readonly TensorMeta[], re: RegExp): TensorMeta | undefined => outputs.find((o) => re.test(o.name));

/** The recognition of a model from its facts. Never throws: what it cannot place is kind 'unknown'. */
export function recogniseModel(facts: ModelFacts): Recognition {
  const metadata = facts.metadata ?? {};
  const input = imageInputOf(facts.inputs, metadata);
  const otherInputs = facts.inputs.filter((i) => i.name !== input?.name).map((i) => i.name);
  const labels = metadata['names'] !== undefined ? parseMetadataNames(metadata['names']) : undefined;
  const reasons: string[] = [];
  const base = { otherInputs, ...(input !== undefined && { input }), ...(labels !== undefined && { labels }) };
  const done = (kind: RecognisedKind, confidence: Confidence, extra: Partial<Recognition> = {}): Recognition => ({
    kind,
    supported: !UNSUPPORTED.has(kind),
    confidence,
    ...base,
    ...extra,
    reasons,
  });
  if (labels !== undefined) reasons.push(`metadata "names" lists ${labels.length} classes`);
  const outputs = facts.outputs;
  const hasNms = facts.ops !== undefined && Object.keys(facts.ops).some((op) => /NonMaxSuppression|BatchedNMS|EfficientNMS/.test(op));

  // 1. The exporter's own word (Ultralytics writes task, kpt_shape).
  const task = metadata['task'];
  if (task === 'segment') {
    reasons.push('metadata task is "segment" (an Ultralytics instance-segmentation export)');
    return done('instance-segmentation', 'high');
  }
  if (task === 'pose' || metadata['kpt_shape'] !== undefined) {
    reasons.push(`metadata ${task === 'pose' ? 'task is "pose"' : `kpt_shape is ${metadata['kpt_shape']}`} (an Ultralytics pose export)`);
    return done('pose', 'high');
  }
  if (task === 'obb') {
    reasons.push('metadata task is "obb" (an Ultralytics oriented-box export)');
    return done('oriented-detection', 'high');
  }

  // 2. Instance masks: a prototype tensor [N, M, h, w] beside the detections, or a `masks` output.
  const rank4 = outputs.filter((o) => o.shape.length === 4);
  const rank3 = outputs.filter((o) => o.shape.length === 3);
  const masks = findName(outputs, /mask/i);
  if (masks !== undefined && masks.shape.length >= 3 && outputs.length > 1) {
    reasons.push(`output "${masks.name}" [${masks.shape.join(',')}] holds per-detection masks`);
    return done('instance-segmentation', 'high');
  }
  if (outputs.length === 2 && rank4.length === 1 && rank3.length === 1) {
    const protos = rank4[0] as TensorMeta;
    const det = rank3[0] as TensorMeta;
    const m = protos.shape[1] as number;
    if (fixed(m) && det.shape.slice(1).some((d) => fixed(d) && d > 4 + m)) {
      reasons.push(
        `output "${protos.name}" [${protos.shape.join(',')}] looks like ${m} mask prototypes and "${det.name}" [${det.shape.join(',')}] like detections carrying ${m} mask coefficients (YOLOv5/v8/11-seg)`,
      );
      return done('instance-segmentation', task === undefined ? 'medium' : 'high');
    }
  }

  // 3. Multi-output detection exports, by their outputs' names.
  if (outputs.length >= 2) {
    const predBoxes = findName(outputs, /pred_boxes/i);
    const logits = findName(outputs, /logits/i);
    if (predBoxes !== undefined && logits !== undefined) {
      reasons.push(`outputs "${predBoxes.name}" and "${logits.name}": DETR's two-output form (normalised centre boxes, class logits)`);
      const classes = logits.shape[2];
      return done('object-detection', 'high', {
        head: { type: 'detr', outputs: { boxes: predBoxes.name, logits: logits.name } },
        ...(fixed(classes) && { classes }),
      });
    }
    const boxes = findName(outputs, /box/i);
    const scores = findName(outputs, /score|conf/i);
    const classesOut = findName(outputs, /class|label/i);
    const num = findName(outputs, /num/i);
    if (boxes !== undefined && scores !== undefined && classesOut !== undefined && classesOut !== scores) {
      reasons.push(
        `outputs "${boxes.name}", "${scores.name}", "${classesOut.name}"${num !== undefined ? ` and "${num.name}"` : ''}: detections already decoded (TensorFlow, torchvision, NMS in the graph)`,
      );
      return done('object-detection', 'high', {
        head: {
          type: 'boxes-scores-classes',
          outputs: { boxes: boxes.name, scores: scores.name, classes: classesOut.name, ...(num !== undefined && { numDetections: num.name }) },
        },
      });
    }
    if (boxes !== undefined && scores !== undefined && boxes.shape.length === 3 && scores.shape.length === 3) {
      const rows = scores.shape[1] as number;
      const classes = scores.shape[2] as number;
      if (boxes.shape[2] === 4 || boxes.shape[2] === -1) {
        const few = fixed(rows) && rows <= 1000;
        reasons.push(
          `outputs "${boxes.name}" [${boxes.shape.join(',')}] and "${scores.name}" [${scores.shape.join(',')}]: a box and a score row per ${few ? 'query (few rows: DETR-like, check the box format)' : 'anchor, decoded in the graph, no NMS (SSD-style)'}`,
        );
        return done('object-detection', few ? 'low' : boxes.name === 'boxes' && scores.name === 'scores' ? 'high' : 'medium', {
          head: few
            ? { type: 'detr', outputs: { boxes: boxes.name, logits: scores.name } }
            : { type: 'ssd', outputs: { boxes: boxes.name, scores: scores.name } },
          ...(fixed(classes) && { classes }),
        });
      }
    }
    reasons.push(`${outputs.length} outputs (${outputs.map((o) => `${o.name} [${o.shape.join(',')}]`).join(', ')}) match no known head`);
    return done('unknown', 'low');
  }

  const out = outputs[0];
  if (out === undefined) {
    reasons.push('the model has no outputs');
    return done('unknown', 'low');
  }
  const shape = out.shape;
  const desc = `output "${out.name}" [${shape.join(',')}]`;

  // 4. One output.
  if (shape.length === 2) {
    const classes = shape[1] as number;
    reasons.push(`${desc}: one score per class (${fixed(classes) ? classes : 'dynamic'})`);
    return done('image-classification', fixed(classes) && classes >= 2 ? 'high' : 'low', fixed(classes) ? { classes } : {});
  }
  if (shape.length === 4 && shape[2] === 1 && shape[3] === 1 && fixed(shape[1]) && (shape[1] as number) >= 2) {
    reasons.push(`${desc}: one score per class with 1x1 spatial dims left in (flatten them to [N, C] for Ocular)`);
    return done('image-classification', 'low', { classes: shape[1] as number });
  }
  const inH = input?.sizeFrom === 'model' ? input.height : undefined;
  const inW = input?.sizeFrom === 'model' ? input.width : undefined;
  if ((shape.length === 3 || shape.length === 4) && isInt(out.type)) {
    reasons.push(`${desc} of ${out.type}: one class index per pixel (a class map)`);
    return done('semantic-segmentation', 'medium', { outputLayout: 'class-map' });
  }
  if (shape.length === 4) {
    const [, c, h, w] = shape as [number, number, number, number];
    const last = shape[3] as number;
    if (input?.layout === 'NHWC' && fixed(last) && (!fixed(c) || c > last)) {
      reasons.push(`${desc} with an NHWC input: per-pixel scores of ${last} classes, channels last`);
      return done('semantic-segmentation', fixed(c) && c === inH ? 'high' : 'medium', { outputLayout: 'NHWC', classes: last });
    }
    if (c === 1) {
      const paddle = out.symbolicShape.some((s) => s.startsWith('p2o.')) || /sigmoid/i.test(out.name);
      reasons.push(`${desc}: one probability per pixel at the input's size (a DB text map${paddle ? ', PaddleOCR export' : ''})`);
      return done('ocr-detection', paddle ? 'high' : 'medium');
    }
    if (fixed(c)) {
      const sameSize = fixed(h) && fixed(w) && h === inH && w === inW;
      reasons.push(`${desc}: per-pixel scores of ${c} classes, channels first${sameSize ? ', at the input size' : ''}`);
      return done('semantic-segmentation', sameSize ? 'high' : 'medium', { outputLayout: 'NCHW', classes: c });
    }
    reasons.push(`${desc} has dynamic channels: not recognised`);
    return done('unknown', 'low');
  }
  if (shape.length !== 3) {
    reasons.push(`${desc} of rank ${shape.length}: not recognised`);
    return done('unknown', 'low');
  }

  const [, a, b] = shape as [number, number, number];
  // PaddleOCR's recogniser: a line image of fixed small height and free width; an output step per few columns.
  if (input !== undefined && fixed(input.height) && input.height <= 64 && input.width === undefined && !fixed(a) && fixed(b)) {
    reasons.push(`${desc}: per-step scores of ${b} characters over a text line of height ${input.height} (CTC, PaddleOCR)`);
    return done('ocr-recognition', 'high', { classes: b });
  }
  const size = input?.height !== undefined && input.width !== undefined ? [input.height, input.width] as const : undefined;
  const grid = size === undefined ? undefined : gridPoints(size[0], size[1], [8, 16, 32]);
  const grid6 = size === undefined ? undefined : gridPoints(size[0], size[1], [8, 16, 32, 64]);
  const isGrid = (n: number): boolean => fixed(n) && (n === grid || n === grid6);
  const names = labels?.length;
  if (b === 6 && (!fixed(a) || a <= 1000)) {
    reasons.push(`${desc}: rows of x1, y1, x2, y2, score, class (NMS in the graph${hasNms ? ', its NonMaxSuppression node seen' : ''}; YOLOv10, Ultralytics nms=True)`);
    return done('object-detection', hasNms || a === 300 || task === 'detect' ? 'high' : 'medium', { head: { type: 'end2end', outputs: { output: out.name } } });
  }
  if (fixed(a) && fixed(b) && a < b && a > 4) {
    const classes = a - 4;
    const sure = isGrid(b) || names === classes || task === 'detect';
    reasons.push(`${desc}: ${a} = 4 box values + ${classes} class scores per anchor, anchors last (Ultralytics YOLOv8/v9/11)`);
    if (isGrid(b)) reasons.push(`${b} anchors = the stride 8/16/32${b === grid6 && b !== grid ? '/64' : ''} grid of the ${size?.[1]}x${size?.[0]} input`);
    if (names === undefined && a === 56) reasons.push('56 rows is also YOLOv8-pose (4 + 1 + 17x3 keypoints), which Ocular does not serve');
    if (names === undefined && a === 20) reasons.push('20 rows is also YOLOv8-obb on DOTA (4 + 15 + angle), which Ocular does not serve');
    if (names !== undefined && names !== classes) {
      reasons.push(`but metadata names ${names} classes: ${a - 4 - names === 1 ? 'one value more per anchor: an oriented-box export?' : 'the counts differ'}`);
      return done('object-detection', 'low', { head: { type: 'ultralytics', outputs: { output: out.name }, anchorsLast: true }, classes });
    }
    return done('object-detection', sure ? 'high' : 'medium', { head: { type: 'ultralytics', outputs: { output: out.name }, anchorsLast: true }, classes });
  }
  if (fixed(b) && b > 5) {
    if (names !== undefined && b === names + 4) {
      reasons.push(`${desc}: ${b} = 4 box values + ${names} class scores (the metadata's names), anchors first (Ultralytics, transposed)`);
      return done('object-detection', 'high', { head: { type: 'ultralytics', outputs: { output: out.name }, anchorsLast: false }, classes: names });
    }
    if (fixed(a) && grid !== undefined && a === 3 * grid) {
      reasons.push(`${desc}: ${a} rows = 3 anchors per cell of the stride 8/16/32 grid; ${b} = 4 box values + objectness + ${b - 5} classes (YOLOv5/v7)`);
      return done('object-detection', 'high', { head: { type: 'yolov5', outputs: { output: out.name } }, classes: b - 5 });
    }
    if (isGrid(a)) {
      reasons.push(`${desc}: ${a} rows = one per cell of the stride 8/16/32 grid; ${b} = 4 box values + objectness + ${b - 5} classes (YOLOX raw head)`);
      if (b !== 85) reasons.push(`or Ultralytics' transposed [N, A, 4+C] with ${b - 4} classes, whose rows have no objectness: check the class count`);
      return done('object-detection', b === 85 ? 'high' : 'medium', { head: { type: 'yolox', outputs: { output: out.name } }, classes: b - 5 });
    }
    if (fixed(a) && a <= 1000) {
      reasons.push(`${desc}: ${a} rows, few for anchors: DETR/RT-DETR queries of 4 normalised box values + ${b - 4} class scores`);
      return done('object-detection', 'medium', { head: { type: 'detr', outputs: { output: out.name } }, classes: b - 4 });
    }
    reasons.push(`${desc}: a row per anchor of ${b} values; the anchor count matches no grid of the input size, so the head is a guess (YOLOv5-style with objectness)`);
    return done('object-detection', 'low', { head: { type: 'yolov5', outputs: { output: out.name } }, classes: b - 5 });
  }
  reasons.push(`${desc}: not recognised`);
  return done('unknown', 'low');
}

/** One line: "object-detection, head ultralytics (80 classes), high confidence". */
export function describeRecognition(r: Recognition): string {
  const head = r.head !== undefined ? `, head ${r.head.type}` : '';
  const classes = r.classes !== undefined ? ` (${r.classes} classes)` : '';
  return `${r.kind}${head}${classes}${r.supported ? '' : ' (not supported by Ocular)'}, ${r.confidence} confidence`;
}

/**
 * The server's refusal of an export it recognises and does not serve (instance segmentation, pose, oriented boxes),
 * at startup, naming what it recognised and why. A low-confidence guess refuses nothing.
 */
export function rejectUnsupportedExport(model: string, field: string, facts: ModelFacts): void {
  const r = recogniseModel(facts);
  if (r.supported || r.confidence === 'low') return;
  throw new ModelCheckError(
    model,
    field,
    `this looks like ${KIND_NAMES[r.kind]} (${r.reasons.filter((x) => !x.startsWith('metadata "names"')).join('; ')}), which Ocular does not serve; export the plain detector (Ultralytics: a detect model, e.g. yolo11n.pt) or serve its raw tensors with task "tensor"`,
  );
}

const KIND_NAMES: Record<RecognisedKind, string> = {
  'image-classification': 'an image classifier',
  'object-detection': 'an object detector',
  'semantic-segmentation': 'a semantic segmentation model',
  'ocr-detection': 'a text detector',
  'ocr-recognition': 'a text-line recogniser',
  'instance-segmentation': 'an instance segmentation export',
  pose: 'a pose (keypoint) export',
  'oriented-detection': 'an oriented-box (OBB) export',
  unknown: 'an unknown model',
};
