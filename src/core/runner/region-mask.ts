import { concat, intField, messageField, readFields, stringField, stringOf, type WireField } from '../onnx-wire.js';
import {
  all,
  attributeInt,
  attributeInts,
  defaultOpset,
  DIM,
  first,
  FLOAT,
  GRAPH,
  initializer,
  INT64,
  int64Bytes,
  floatBytes,
  MODEL,
  NODE,
  payload,
  SHAPE,
  TENSOR,
  TENSOR_TYPE,
  TYPE,
  VALUE_INFO,
} from './uint8-prefix.js';

/**
 * A detector's padding made invisible (issue #17, size buckets): the model rewritten so that what it computes for an
 * image at the top-left of a larger tensor equals what it computes for the image alone, up to float rounding.
 *
 * Padding moves a convolutional detector's output everywhere, not only near the edge: PP-OCRv4's detector has 10
 * squeeze-and-excitation blocks, each a GlobalAveragePool over the whole input, padding included (measured on the
 * shared model: a 640x480 photo in a 960x704 bucket moved its probability map by up to 0.99, and 95 pixels crossed
 * the 0.3 threshold). The rewrite:
 * - a new input REGION_INPUT, float [N, 2]: each row's image height and width, in input pixels;
 * - every Conv with a kernel larger than 1 reads its input zeroed outside the row's region, which is what the same
 *   convolution's zero padding gives at the image's own edge;
 * - every GlobalAveragePool becomes the mean over the region (the sum of the zeroed input over the region's area).
 * The region at a tensor of h x w is the input region scaled by h/H and w/W: exact where the image and tensor sizes
 * are multiples of the model's total stride (32 for DB detectors at limit-round32 sizes and their buckets).
 *
 * Other operators must not mix positions in a way the masks do not cover, so the rewrite accepts a known list and
 * refuses a model with anything else (MaskError): pointwise operators, channel Concat, nearest Resize with
 * asymmetric coordinates and floor (each output pixel reads the input pixel it scales from), and ConvTranspose
 * whose kernel equals its stride (each input pixel writes only its own block).
 *
 * Like the uint8 prefix (uint8-prefix.ts) the graph is edited on the wire; the names it adds start with
 * MASK_NAMESPACE. It applies before the prefix, which keeps the other inputs as they are.
 */

export const MASK_NAMESPACE = 'ocular_mask/';
export const REGION_INPUT = `${MASK_NAMESPACE}region`;

/** Bumped whenever the rewrite of the same model changes: cached models are keyed by it. */
export const MASK_VERSION = 1;

export class MaskError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MaskError';
  }
}

/** Operators that compute each output position from the same position of their inputs (broadcasting allowed). */
const POINTWISE = new Set([
  'Add', 'Sub', 'Mul', 'Div', 'Pow', 'Sqrt', 'Exp', 'Neg', 'Abs', 'Max', 'Min', 'Relu', 'LeakyRelu', 'PRelu', 'Clip',
  'Sigmoid', 'HardSigmoid', 'HardSwish', 'Tanh', 'BatchNormalization', 'Constant', 'Identity', 'Cast',
]);

const ATTR = { name: 1, i: 3, s: 4, ints: 8 } as const;

interface Attribute {
  i?: number;
  s?: string;
  ints: number[];
}

function attributesOf(nodeFields: readonly WireField[]): Map<string, Attribute> {
  const out = new Map<string, Attribute>();
  for (const f of all(nodeFields, NODE.attribute)) {
    const fields = readFields(payload(f, 'attribute'));
    const ints: number[] = [];
    for (const g of all(fields, ATTR.ints)) {
      if (typeof g.value === 'number') ints.push(g.value);
      else for (const p of readFields(concatPacked(g.value))) if (typeof p.value === 'number') ints.push(p.value);
    }
    const i = first(fields, ATTR.i);
    const s = stringOf(first(fields, ATTR.s));
    out.set(stringOf(first(fields, ATTR.name)) ?? '', {
      ints,
      ...(typeof i?.value === 'number' && { i: i.value }),
      ...(s !== undefined && { s }),
    });
  }
  return out;
}

/** Packed varints as a message of field-1 varints, so readFields can read them (tag 0x08 before each). */
function concatPacked(bytes: Uint8Array): Uint8Array {
  const out: number[] = [];
  let start = true;
  for (const b of bytes) {
    if (start) out.push(0x08);
    out.push(b);
    start = (b & 0x80) === 0;
  }
  return Uint8Array.from(out);
}

/**
 * The model with REGION_INPUT and its padding masked out of every convolution and average, or MaskError where the
 * model holds an operator the masks do not cover, or an opset before 11 (Range).
 */
export function addRegionMask(modelBytes: Uint8Array): Uint8Array {
  if (Buffer.from(modelBytes.buffer, modelBytes.byteOffset, modelBytes.byteLength).includes(MASK_NAMESPACE)) {
    throw new MaskError(`the model already holds the name ${MASK_NAMESPACE}, which the mask uses`);
  }
  const model = readFields(modelBytes);
  const opset = defaultOpset(model) ?? 0;
  if (opset < 11) throw new MaskError(`opset ${opset}: the mask needs 11 or later (Range)`);
  const graphFields = all(model, MODEL.graph);
  if (graphFields.length !== 1) throw new MaskError(`the model has ${graphFields.length} graph fields, not 1`);
  const graph = readFields(payload(graphFields[0], 'graph'));
  const initializerNames = new Set(all(graph, GRAPH.initializer).map((f) => stringOf(first(readFields(payload(f, 'initializer')), TENSOR.name))));
  const image = all(graph, GRAPH.input)
    .map((f) => stringOf(first(readFields(payload(f, 'graph input')), VALUE_INFO.name)) ?? '')
    .find((n) => !initializerNames.has(n));
  if (image === undefined) throw new MaskError('the model has no input to feed');

  const b = new GraphBuilder(opset);
  const regionInput = messageField(GRAPH.input, [
    stringField(VALUE_INFO.name, REGION_INPUT),
    messageField(VALUE_INFO.type, [
      messageField(TYPE.tensorType, [
        intField(TENSOR_TYPE.elemType, FLOAT),
        messageField(TENSOR_TYPE.shape, [messageField(SHAPE.dim, [stringField(DIM.param, 'N')]), messageField(SHAPE.dim, [intField(DIM.value, 2)])]),
      ]),
    ]),
  ]);
  // The input's own size and the region's rows, once.
  const inputShape = b.op('Shape', [image]);
  const inputH = b.dim(inputShape, 2);
  const inputW = b.dim(inputShape, 3);
  const regionH = b.squeeze(b.op('Slice', [REGION_INPUT, b.ints([0]), b.ints([1]), b.ints([1])]), 1);
  const regionW = b.squeeze(b.op('Slice', [REGION_INPUT, b.ints([1]), b.ints([2]), b.ints([1])]), 1);
  const head = b.take();

  /** The [N, 1, h, 1] and [N, 1, 1, w] masks at tensor t's resolution, and the region's size there, [N]. */
  const masksOf = (t: string) => {
    const shape = b.op('Shape', [t]);
    const h = b.dim(shape, 2);
    const w = b.dim(shape, 3);
    const vh = b.op('Mul', [regionH, b.op('Div', [h, inputH])]);
    const vw = b.op('Mul', [regionW, b.op('Div', [w, inputW])]);
    const axis = (n: string, size: string, axes: number[]) =>
      b.unsqueeze(b.op('Cast', [b.op('Less', [b.unsqueeze(b.op('Range', [b.float(0), size, b.float(1)]), [0]), b.unsqueeze(n, [1])])], [attributeInt('to', FLOAT)]), axes);
    return { rows: axis(vh, h, [1, 3]), cols: axis(vw, w, [1, 2]), vh, vw };
  };
  const maskedInput = (t: string) => {
    const m = masksOf(t);
    // One [N, 1, h, w] mask, then one product over the feature map: the map is the large operand, read once.
    return { ...m, masked: b.op('Mul', [t, b.op('Mul', [m.rows, m.cols])]) };
  };

  const nodes: Uint8Array[] = [];
  for (const f of all(graph, GRAPH.node)) {
    const fields = readFields(payload(f, 'node'));
    const op = stringOf(first(fields, NODE.opType)) ?? '';
    const domain = stringOf(first(fields, NODE.domain)) ?? '';
    const name = stringOf(first(fields, NODE.name)) ?? op;
    const attrs = attributesOf(fields);
    const inputs = all(fields, NODE.input).map((i) => stringOf(i) ?? '');
    if (domain !== '' && domain !== 'ai.onnx') throw new MaskError(`node ${name}: operator ${domain}::${op} is not one the mask covers`);
    if (op === 'Conv') {
      const kernel = attrs.get('kernel_shape')?.ints;
      if (kernel === undefined || kernel.some((k) => k > 1)) {
        const { masked } = maskedInput(inputs[0] ?? '');
        nodes.push(...b.take());
        nodes.push(withFirstInput(fields, masked));
        continue;
      }
    } else if (op === 'GlobalAveragePool') {
      const { masked, vh, vw } = maskedInput(inputs[0] ?? '');
      const sum = b.reduceSum(masked, [2, 3]);
      const area = b.unsqueeze(b.op('Mul', [vh, vw]), [1, 2, 3]);
      const output = stringOf(first(fields, NODE.output)) ?? '';
      b.opTo('Div', [sum, area], output);
      nodes.push(...b.take());
      continue;
    } else if (op === 'ConvTranspose') {
      const kernel = attrs.get('kernel_shape')?.ints ?? [];
      const strides = attrs.get('strides')?.ints ?? [];
      const pads = attrs.get('pads')?.ints ?? [];
      const exact = kernel.length > 0 && kernel.every((k, i) => k === strides[i]) && pads.every((p) => p === 0) && !attrs.has('output_padding');
      if (!exact) throw new MaskError(`node ${name}: ConvTranspose whose kernel is not its stride mixes blocks the mask does not cover`);
    } else if (op === 'Resize') {
      const nearest = attrs.get('mode')?.s === 'nearest' && attrs.get('coordinate_transformation_mode')?.s === 'asymmetric' && (attrs.get('nearest_mode')?.s ?? 'round_prefer_floor') === 'floor';
      if (!nearest) throw new MaskError(`node ${name}: Resize other than nearest, asymmetric, floor reads past the region's edge`);
    } else if (op === 'Concat') {
      if (attrs.get('axis')?.i !== 1) throw new MaskError(`node ${name}: Concat on an axis other than the channels`);
    } else if (!POINTWISE.has(op)) {
      throw new MaskError(`node ${name}: operator ${op} is not one the mask covers`);
    }
    nodes.push(f.raw);
  }

  // The mask's head first (topological order), the graph's own nodes with the masks before their readers, the other
  // fields as they were, the new input after the image's, the mask's constants last.
  const graphParts: Uint8Array[] = [...head, ...nodes];
  for (const f of graph) {
    if (f.field === GRAPH.node) continue;
    graphParts.push(f.raw);
    if (f.field === GRAPH.input && stringOf(first(readFields(payload(f, 'graph input')), VALUE_INFO.name)) === image) graphParts.push(regionInput);
  }
  graphParts.push(...b.constants);
  return concat(model.map((f) => (f === graphFields[0] ? messageField(MODEL.graph, graphParts) : f.raw)));
}

/** REGION_INPUT's values for a batch: each item's height and width, then the whole tensor for each padding row. */
export function regionData(items: readonly { width: number; height: number }[], rows: number, tensorHeight: number, tensorWidth: number): Float32Array {
  const data = new Float32Array(rows * 2);
  for (let i = 0; i < rows; i++) {
    const item = items[i];
    data[2 * i] = item?.height ?? tensorHeight;
    data[2 * i + 1] = item?.width ?? tensorWidth;
  }
  return data;
}

/** The node with its first input renamed (the data input of a Conv). */
function withFirstInput(fields: readonly WireField[], input: string): Uint8Array {
  let done = false;
  const parts = fields.map((f) => {
    if (done || f.field !== NODE.input) return f.raw;
    done = true;
    return stringField(NODE.input, input);
  });
  return messageField(GRAPH.node, parts);
}

/** Nodes and constants under MASK_NAMESPACE, each name unique; `take` hands over the nodes made since the last. */
class GraphBuilder {
  private n = 0;
  private pending: Uint8Array[] = [];
  readonly constants: Uint8Array[] = [];

  constructor(private readonly opset: number) {}

  private fresh(what: string): string {
    return `${MASK_NAMESPACE}${what}_${this.n++}`;
  }

  op(type: string, inputs: string[], attributes: Uint8Array[] = []): string {
    return this.opTo(type, inputs, this.fresh(type.toLowerCase()), attributes);
  }

  opTo(type: string, inputs: string[], output: string, attributes: Uint8Array[] = []): string {
    this.pending.push(
      messageField(GRAPH.node, [
        ...inputs.map((i) => stringField(NODE.input, i)),
        stringField(NODE.output, output),
        stringField(NODE.name, this.fresh(`${type.toLowerCase()}_node`)),
        stringField(NODE.opType, type),
        ...attributes,
      ]),
    );
    return output;
  }

  take(): Uint8Array[] {
    const out = this.pending;
    this.pending = [];
    return out;
  }

  ints(values: number[]): string {
    const name = this.fresh('ints');
    this.constants.push(initializer(name, INT64, [values.length], int64Bytes(values)));
    return name;
  }

  float(value: number): string {
    const name = this.fresh('float');
    this.constants.push(initializer(name, FLOAT, [], floatBytes([value])));
    return name;
  }

  /** Dimension `axis` of a Shape output, as a float scalar. */
  dim(shape: string, axis: number): string {
    const index = this.fresh('index');
    this.constants.push(initializer(index, INT64, [], int64Bytes([axis])));
    return this.op('Cast', [this.op('Gather', [shape, index], [attributeInt('axis', 0)])], [attributeInt('to', FLOAT)]);
  }

  // Unsqueeze, Squeeze and ReduceSum take their axes as an attribute before opset 13, as an input from it.
  unsqueeze(t: string, axes: number[]): string {
    return this.opset < 13 ? this.op('Unsqueeze', [t], [attributeInts('axes', axes)]) : this.op('Unsqueeze', [t, this.ints(axes)]);
  }

  squeeze(t: string, axis: number): string {
    return this.opset < 13 ? this.op('Squeeze', [t], [attributeInts('axes', [axis])]) : this.op('Squeeze', [t, this.ints([axis])]);
  }

  reduceSum(t: string, axes: number[]): string {
    return this.opset < 13
      ? this.op('ReduceSum', [t], [attributeInts('axes', axes), attributeInt('keepdims', 1)])
      : this.op('ReduceSum', [t, this.ints(axes)], [attributeInt('keepdims', 1)]);
  }
}
