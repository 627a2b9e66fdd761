/**
 * ONNX graphs for the detection heads (src/tasks/detection/heads.ts), written with onnx-proto:
 * - `wrapYoloxNano`: the shared yolox-nano with its raw head decoded inside the graph (grids, strides, exp, obj·cls)
 *   and re-emitted in each head's layout, the end-to-end forms with an in-graph NonMaxSuppression. Ocular reading
 *   one of them through its head must give what it reads from yolox-nano itself.
 * - `constantHeadModel`: a tiny model whose output is a fixed tensor scaled per image by the image's mean pixel, for
 *   edge cases with known outputs (and a batch whose images must not be mixed up).
 * Both hold or derive from the shared weights' licence-free structure only; files go to git-ignored folders.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
const FLOAT = 1;
const INT64 = 7;
const ATTR_FLOAT = 1;
const ATTR_INT = 2;
const ATTR_INTS = 7;

type Dim = number | string;
type Attr = number | number[] | { f: number };

function valueInfo(name: string, elemType: number, dims: Dim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function attributes(attrs: Record<string, Attr> = {}): onnxProto.onnx.IAttributeProto[] {
  return Object.entries(attrs).map(([name, v]) => {
    if (Array.isArray(v)) return { name, type: ATTR_INTS, ints: v };
    if (typeof v === 'number') return { name, type: ATTR_INT, i: v };
    return { name, type: ATTR_FLOAT, f: v.f };
  });
}

/** Float32 or int64 constant tensors, by name. */
class Graph {
  readonly nodes: onnxProto.onnx.INodeProto[] = [];
  readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private n = 0;
  constructor(private readonly prefix: string) {}

  floats(name: string, dims: number[], values: ArrayLike<number>): string {
    const full = `${this.prefix}/${name}`;
    this.initializers.push({ name: full, dims, dataType: FLOAT, rawData: new Uint8Array(Float32Array.from(values).buffer) });
    return full;
  }

  ints(name: string, values: number[]): string {
    const full = `${this.prefix}/${name}`;
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.initializers.push({ name: full, dims: [values.length], dataType: INT64, rawData: new Uint8Array(data.buffer) });
    return full;
  }

  /** Adds a node; returns its (first) output, named after it unless `outputs` are given. */
  op(opType: string, input: string[], attribute?: Record<string, Attr>, outputs?: string[]): string {
    const name = `${this.prefix}/${opType}_${this.n++}`;
    const output = outputs ?? [name];
    this.nodes.push({ opType, input, output, name, attribute: attributes(attribute) });
    return output[0] as string;
  }

  /** x[..., start:end] on `axis`. */
  slice(x: string, axis: number, start: number, end: number): string {
    return this.op('Slice', [x, this.ints(`s${this.n}`, [start]), this.ints(`e${this.n}`, [end]), this.ints(`a${this.n}`, [axis])]);
  }
}

/** The variants the tests read: each a model file and the manifest `head` that reads it. */
export const YOLOX_HEAD_VARIANTS = [
  'ultralytics-channels-first',
  'ultralytics-anchors-first',
  'yolov5',
  'end2end',
  'boxes-scores-labels',
  'boxes-scores-classes-tf',
  'detr-sigmoid',
  'detr-two-outputs',
  'detr-softmax',
  'detr-probabilities',
] as const;
export type YoloxHeadVariant = (typeof YOLOX_HEAD_VARIANTS)[number];

export interface HeadModel {
  model: Buffer;
  /** The manifest's `head` for it. */
  head: Record<string, unknown>;
}

const SIZE = 416;
const STRIDES = [8, 16, 32];
const CLASSES = 80;
/** In-graph NMS of the end-to-end variants: Ocular's defaults, and a lower score threshold than its 0.3. */
const NMS_IOU = 0.45;
const NMS_SCORE = 0.2;
const NMS_KEEP = 100;

/** Per anchor row: grid x, grid y, stride (YOLOX's order: strides ascending, each grid row-major). */
function grids(): { gx: number[]; gy: number[]; s: number[] } {
  const gx: number[] = [];
  const gy: number[] = [];
  const s: number[] = [];
  for (const stride of STRIDES) {
    const n = SIZE / stride;
    for (let y = 0; y < n; y++) {
      for (let x = 0; x < n; x++) {
        gx.push(x);
        gy.push(y);
        s.push(stride);
      }
    }
  }
  return { gx, gy, s };
}

/**
 * The shared yolox-nano (`model.onnx`, dynamic batch; `model_static_b1.onnx` for the NMS variants, whose
 * selection is written for one image) with its raw output `output` [N, 3549, 85] decoded in the graph and
 * re-emitted as `variant`.
 */
export function wrapYoloxNano(modelDir: string, variant: YoloxHeadVariant): HeadModel {
  const nmsVariant = variant === 'end2end' || variant.startsWith('boxes-scores');
  const source = readFileSync(join(modelDir, nmsVariant ? 'model_static_b1.onnx' : 'model.onnx'));
  const model = onnx.ModelProto.decode(source);
  const graph = model.graph as onnxProto.onnx.GraphProto;
  const raw = graph.output[0]?.name ?? 'output';
  const g = new Graph('ocular_head');
  const { gx, gy, s } = grids();
  const anchors = gx.length;
  const gxT = g.floats('gx', [1, anchors, 1], gx);
  const gyT = g.floats('gy', [1, anchors, 1], gy);
  const sT = g.floats('stride', [1, anchors, 1], s);
  const cx = g.op('Mul', [g.op('Add', [g.slice(raw, 2, 0, 1), gxT]), sT]);
  const cy = g.op('Mul', [g.op('Add', [g.slice(raw, 2, 1, 2), gyT]), sT]);
  const w = g.op('Mul', [g.op('Exp', [g.slice(raw, 2, 2, 3)]), sT]);
  const h = g.op('Mul', [g.op('Exp', [g.slice(raw, 2, 3, 4)]), sT]);
  const obj = g.slice(raw, 2, 4, 5);
  const cls = g.slice(raw, 2, 5, 5 + CLASSES);
  const scores = g.op('Mul', [obj, cls]); // [N, A, C]
  const centreBoxes = g.op('Concat', [cx, cy, w, h], { axis: 2 }); // [N, A, 4] pixels
  const batch: Dim = nmsVariant ? 1 : 'batch';
  let outputs: onnxProto.onnx.IValueInfoProto[];
  let head: Record<string, unknown>;

  const normalisedBoxes = (): string => g.op('Div', [centreBoxes, g.floats('size', [1], [SIZE])]);
  /** log(p / (1 - p)): sigmoid gives p back. */
  const logits = (): string => g.op('Log', [g.op('Div', [scores, g.op('Sub', [g.floats('one', [1], [1]), scores])])]);

  switch (variant) {
    case 'ultralytics-channels-first':
      g.op('Transpose', [g.op('Concat', [centreBoxes, scores], { axis: 2 })], { perm: [0, 2, 1] }, ['output0']);
      outputs = [valueInfo('output0', FLOAT, [batch, 4 + CLASSES, anchors])];
      head = { type: 'ultralytics' };
      break;
    case 'ultralytics-anchors-first':
      g.op('Concat', [centreBoxes, scores], { axis: 2 }, ['output0']);
      outputs = [valueInfo('output0', FLOAT, [batch, anchors, 4 + CLASSES])];
      head = { type: 'ultralytics', layout: 'anchors-first' };
      break;
    case 'yolov5':
      g.op('Concat', [centreBoxes, obj, cls], { axis: 2 }, ['output0']);
      outputs = [valueInfo('output0', FLOAT, [batch, anchors, 5 + CLASSES])];
      head = { type: 'yolov5' };
      break;
    case 'detr-sigmoid':
      g.op('Concat', [normalisedBoxes(), logits()], { axis: 2 }, ['output0']);
      outputs = [valueInfo('output0', FLOAT, [batch, anchors, 4 + CLASSES])];
      head = { type: 'detr', nms: true };
      break;
    case 'detr-probabilities':
      // Ultralytics' RT-DETR export: [N, Q, 4 + C], the sigmoid applied in the graph.
      g.op('Concat', [normalisedBoxes(), scores], { axis: 2 }, ['output0']);
      outputs = [valueInfo('output0', FLOAT, [batch, anchors, 4 + CLASSES])];
      head = { type: 'detr', scores: 'probabilities', nms: true };
      break;
    case 'detr-two-outputs':
      g.op('Identity', [normalisedBoxes()], undefined, ['pred_boxes']);
      g.op('Identity', [logits()], undefined, ['pred_logits']);
      outputs = [valueInfo('pred_logits', FLOAT, [batch, anchors, CLASSES]), valueInfo('pred_boxes', FLOAT, [batch, anchors, 4])];
      head = { type: 'detr', boxesOutput: 'pred_boxes', logitsOutput: 'pred_logits', nms: true };
      break;
    case 'detr-softmax': {
      // Logits whose softmax over C + 1 columns gives the anchor's best class its score p and spreads 1 - p over
      // the other 80 columns (79 classes and "no object"): DETR's reading is then the best class at p.
      const best = g.op('ReduceMax', [scores], { axes: [2], keepdims: 1 }); // [N, A, 1]
      const arg = g.op('ArgMax', [scores], { axis: 2, keepdims: 1 }); // [N, A, 1] int64
      const columns = g.ints('columns', Array.from({ length: CLASSES + 1 }, (_, i) => i));
      const isBest = g.op('Equal', [arg, columns]); // [N, A, C + 1]
      const rest = g.op('Log', [g.op('Div', [g.op('Sub', [g.floats('one1', [1], [1]), best]), g.floats('others', [1], [CLASSES])])]);
      const boxes = normalisedBoxes();
      g.op('Concat', [boxes, g.op('Where', [isBest, g.op('Log', [best]), rest])], { axis: 2 }, ['output0']);
      outputs = [valueInfo('output0', FLOAT, [batch, anchors, 5 + CLASSES])];
      head = { type: 'detr', scores: 'softmax', nms: true };
      break;
    }
    default: {
      // One image: NonMaxSuppression per class over corner boxes, the best NMS_KEEP of what it keeps, padded
      // with zero rows to NMS_KEEP.
      const half = g.floats('half', [1], [0.5]);
      const hw = g.op('Mul', [w, half]);
      const hh = g.op('Mul', [h, half]);
      const x1 = g.op('Sub', [cx, hw]);
      const y1 = g.op('Sub', [cy, hh]);
      const x2 = g.op('Add', [cx, hw]);
      const y2 = g.op('Add', [cy, hh]);
      const corners = g.op('Concat', [x1, y1, x2, y2], { axis: 2 }); // [1, A, 4]
      const byClass = g.op('Transpose', [scores], { perm: [0, 2, 1] }); // [1, C, A]
      const selected = g.op('NonMaxSuppression', [
        corners,
        byClass,
        g.ints('keep', [NMS_KEEP]),
        g.floats('iou', [1], [NMS_IOU]),
        g.floats('score', [1], [NMS_SCORE]),
      ]); // [M, 3]: batch, class, box
      const selScores = g.op('GatherND', [byClass, selected]); // [M]
      // min(M, NMS_KEEP) in float: opset 11's Min takes no integers.
      const kF = g.op('Min', [g.op('Cast', [g.op('Shape', [selScores])], { to: FLOAT }), g.floats('k_max', [1], [NMS_KEEP])]);
      const k = g.op('Cast', [kF], { to: INT64 });
      const top = g.op('TopK', [selScores, k], { axis: 0 }, [`${selScores}/values`, `${selScores}/indices`]);
      const topIdx = `${selScores}/indices`;
      const kept = g.op('Gather', [selected, topIdx], { axis: 0 }); // [k, 3]
      const classOf = g.op('Gather', [kept, g.ints('col1', [1])], { axis: 1 }); // [k, 1] int64
      const boxOf = g.op('Gather', [kept, g.ints('col2', [2])], { axis: 1 }); // [k, 1]
      const flat = (x: string): string => g.op('Squeeze', [x], { axes: [0] });
      const pads = g.op('Concat', [g.ints('p0', [0, 0]), g.op('Sub', [g.ints('k_keep', [NMS_KEEP]), k]), g.ints('p1', [0])], { axis: 0 });
      const padRows = (x: string, name: string): string => g.op('Unsqueeze', [g.op('Pad', [x, pads])], { axes: [0] }, [name]);
      const padList = (x: string, name: string): string =>
        g.op('Squeeze', [g.op('Pad', [g.op('Unsqueeze', [x], { axes: [1] }), pads])], { axes: [1] }, [`${name}/flat`]);
      const keptScores = g.op('Unsqueeze', [top], { axes: [1] }); // [k, 1]
      const classF = g.op('Cast', [classOf], { to: FLOAT });
      const pick = (b: string): string => g.op('Gather', [flat(b), g.op('Squeeze', [boxOf], { axes: [1] })], { axis: 0 }); // [k, 4]
      if (variant === 'end2end') {
        padRows(g.op('Concat', [pick(corners), keptScores, classF], { axis: 1 }), 'output0');
        outputs = [valueInfo('output0', FLOAT, [1, NMS_KEEP, 6])];
        head = { type: 'end2end' };
      } else if (variant === 'boxes-scores-labels') {
        // torchvision's names and types: xyxy pixels, int64 labels from 0.
        padRows(pick(corners), 'boxes');
        g.op('Unsqueeze', [padList(top, 'scores')], { axes: [0] }, ['scores']);
        g.op('Unsqueeze', [padList(g.op('Squeeze', [classOf], { axes: [1] }), 'labels')], { axes: [0] }, ['labels']);
        outputs = [valueInfo('boxes', FLOAT, [1, NMS_KEEP, 4]), valueInfo('scores', FLOAT, [1, NMS_KEEP]), valueInfo('labels', INT64, [1, NMS_KEEP])];
        head = { type: 'boxes-scores-classes' };
      } else {
        // TensorFlow's: yxyx normalised, float classes from 1, num_detections (rows past it are padding).
        const yxyx = g.op('Div', [g.op('Concat', [y1, x1, y2, x2], { axis: 2 }), g.floats('size_tf', [1], [SIZE])]);
        const classes = g.op('Add', [g.op('Squeeze', [classF], { axes: [1] }), g.floats('one_tf', [1], [1])]);
        padRows(pick(yxyx), 'detection_boxes');
        g.op('Unsqueeze', [padList(top, 'detection_scores')], { axes: [0] }, ['detection_scores']);
        g.op('Unsqueeze', [padList(classes, 'detection_classes')], { axes: [0] }, ['detection_classes']);
        g.op('Cast', [k], { to: FLOAT }, ['num_detections']);
        outputs = [
          valueInfo('detection_boxes', FLOAT, [1, NMS_KEEP, 4]),
          valueInfo('detection_scores', FLOAT, [1, NMS_KEEP]),
          valueInfo('detection_classes', FLOAT, [1, NMS_KEEP]),
          valueInfo('num_detections', FLOAT, [1]),
        ];
        head = {
          type: 'boxes-scores-classes',
          boxesOutput: 'detection_boxes',
          scoresOutput: 'detection_scores',
          classesOutput: 'detection_classes',
          countOutput: 'num_detections',
          boxFormat: 'yxyx',
          normalized: true,
          classOffset: 1,
        };
      }
    }
  }
  graph.node.push(...g.nodes.map((n) => onnx.NodeProto.create(n)));
  graph.initializer.push(...g.initializers.map((i) => onnx.TensorProto.create(i)));
  graph.output = outputs.map((o) => onnx.ValueInfoProto.create(o));
  graph.valueInfo = [];
  return { model: Buffer.from(onnx.ModelProto.encode(model).finish()), head };
}

/** Writes `model` into `dir` (created) under a name that carries its hash; returns the path and the sha256. */
export function writeModel(dir: string, name: string, model: Buffer): { path: string; sha256: string } {
  mkdirSync(dir, { recursive: true });
  const sha256 = createHash('sha256').update(model).digest('hex');
  const path = join(dir, `${name}.onnx`);
  writeFileSync(path, model);
  return { path, sha256 };
}

export interface ConstantOutput {
  name: string;
  /** Dims of one image's output (the model adds the batch dim in front). */
  dims: number[];
  /** The output's values for an all-black image, row-major. */
  base: number[];
  /** Added times the image's mean input value (0..1 with scale 1/255): how one image's output differs from another's. */
  delta?: number[];
  int64?: boolean;
}

/**
 * A tiny detector with known outputs: input `images` float [N, 3, size, size]; each output is
 * `base + mean(image) · delta`, per image, so a batch of different images has different outputs in its rows.
 */
export function constantHeadModel(size: number, outputs: readonly ConstantOutput[]): Buffer {
  const g = new Graph('tiny');
  const mean = g.op('ReduceMean', ['images'], { axes: [1, 2, 3], keepdims: 0 }); // [N]
  for (const o of outputs) {
    const count = o.dims.reduce((a, b) => a * b, 1);
    if (o.base.length !== count || (o.delta !== undefined && o.delta.length !== count)) throw new Error(`${o.name}: ${count} values expected`);
    const perImage = g.op('Reshape', [mean, g.ints(`${o.name}_shape`, [-1, ...o.dims.map(() => 1)])]);
    const base = g.floats(`${o.name}_base`, [1, ...o.dims], o.base);
    const delta = g.floats(`${o.name}_delta`, [1, ...o.dims], o.delta ?? new Array<number>(count).fill(0));
    const sum = g.op('Add', [base, g.op('Mul', [perImage, delta])], undefined, o.int64 === true ? undefined : [o.name]);
    if (o.int64 === true) g.op('Cast', [sum], { to: INT64 }, [o.name]);
  }
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'ocular-tests',
    opsetImport: [{ domain: '', version: 13 }],
    graph: {
      name: 'tiny-head',
      node: g.nodes,
      initializer: g.initializers,
      input: [valueInfo('images', FLOAT, ['N', 3, size, size])],
      output: outputs.map((o) => valueInfo(o.name, o.int64 === true ? INT64 : FLOAT, ['N', ...o.dims])),
    },
  });
  return Buffer.from(onnx.ModelProto.encode(model).finish());
}
