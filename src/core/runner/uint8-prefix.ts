import type { TensorMeta } from '../types.js';
import { bytesField, concat, intField, messageField, readFields, stringField, stringOf, WireError, type WireField } from '../onnx-wire.js';
import type { NormalizeParams } from './normalize.js';

/**
 * uint8 pixels to the model: the input spec's normalisation (channel order, layout, scale, mean, std) written into
 * the model's graph as a prefix, so the inference worker hands over the prepared pixels as they are (one byte per
 * value, 4 times fewer than float32) and the session normalises them, on the device where it runs.
 *
 * The combined model takes `PIXELS_INPUT`: uint8 [N, H, W, 3], interleaved RGB, exactly the bytes sharp prepares.
 * The prefix, in that order, each step only where needed:
 *   Gather(axis 3, [2, 1, 0])      BGR models: the channels reversed (on bytes, the cheapest place)
 *   Transpose(perm [0, 3, 1, 2])   NCHW models (on bytes too)
 *   Cast(to float)
 *   Mul(a), Add(b)                 a[t] = scale / std[t], b[t] = -mean[t] / std[t]: the affine normalizeInto
 *                                  computes (runner/normalize.ts), per tensor channel t; Mul left out where every
 *                                  a is 1, Add where every b is 0
 * and the last step's output carries the original input's name, so the original graph reads it unchanged.
 *
 * The graph is edited on the wire (../onnx-wire.ts): every other field of the model is kept byte for byte. The
 * prefix's names all start with PREFIX_NAMESPACE; a model that already uses that string anywhere is refused.
 */

export const PREFIX_NAMESPACE = 'ocular_u8/';
export const PIXELS_INPUT = `${PREFIX_NAMESPACE}pixels`;

/** Bumped whenever the prefix written for the same inputs changes: cached combined models are keyed by it. */
export const PREFIX_VERSION = 1;

export class PrefixError extends Error {
  /**
   * `ownInput`: the model's image input is not float32 of rank 4 (a float16, uint8 or batchless export), which the
   * runner feeds in its own type instead (image-feed.ts): no prefix is needed or possible, and that is no failure.
   */
  constructor(
    message: string,
    readonly ownInput = false,
  ) {
    super(message);
    this.name = 'PrefixError';
  }
}

export interface Uint8Model {
  /** The combined model's bytes. */
  model: Uint8Array;
  /** The original image input as the model declares it: what the stage reports and checks (float32). */
  original: TensorMeta;
}

// ONNX field numbers (onnx.proto): ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto, TypeProto,
// TypeProto.Tensor, TensorShapeProto, TensorProto, OperatorSetIdProto.
export const MODEL = { irVersion: 1, graph: 7, opsetImport: 8 } as const;
export const GRAPH = { node: 1, initializer: 5, input: 11 } as const;
export const NODE = { input: 1, output: 2, name: 3, opType: 4, attribute: 5, domain: 7 } as const;
export const ATTRIBUTE = { name: 1, i: 3, ints: 8, type: 20 } as const;
export const ATTRIBUTE_INT = 2;
export const ATTRIBUTE_INTS = 7;
export const VALUE_INFO = { name: 1, type: 2 } as const;
export const TYPE = { tensorType: 1 } as const;
export const TENSOR_TYPE = { elemType: 1, shape: 2 } as const;
export const SHAPE = { dim: 1 } as const;
export const DIM = { value: 1, param: 2 } as const;
export const TENSOR = { dims: 1, dataType: 2, name: 8, rawData: 9 } as const;
export const OPSET = { domain: 1, version: 2 } as const;
export const FLOAT = 1;
export const UINT8 = 2;
export const INT64 = 7;
/** Mul and Add broadcast numpy-style from opset 7 on; ONNX IR 4 lets initializers stay out of the inputs. */
const MIN_OPSET = 7;
const MIN_IR_VERSION = 4;

export const first = (fields: readonly WireField[], field: number): WireField | undefined => fields.find((f) => f.field === field);
export const all = (fields: readonly WireField[], field: number): WireField[] => fields.filter((f) => f.field === field);
export const payload = (f: WireField | undefined, what: string): Uint8Array => {
  if (f === undefined || !(f.value instanceof Uint8Array)) throw new PrefixError(`${what} is missing`);
  return f.value;
};
export const intOf = (f: WireField | undefined): number | undefined => (typeof f?.value === 'number' ? f.value : undefined);

export function attributeInt(name: string, value: number): Uint8Array {
  return messageField(NODE.attribute, [stringField(ATTRIBUTE.name, name), intField(ATTRIBUTE.i, value), intField(ATTRIBUTE.type, ATTRIBUTE_INT)]);
}

export function attributeInts(name: string, values: readonly number[]): Uint8Array {
  return messageField(NODE.attribute, [
    stringField(ATTRIBUTE.name, name),
    ...values.map((v) => intField(ATTRIBUTE.ints, v)),
    intField(ATTRIBUTE.type, ATTRIBUTE_INTS),
  ]);
}

function node(opType: string, inputs: readonly string[], output: string, attributes: readonly Uint8Array[] = []): Uint8Array {
  return messageField(GRAPH.node, [
    ...inputs.map((i) => stringField(NODE.input, i)),
    stringField(NODE.output, output),
    stringField(NODE.name, `${PREFIX_NAMESPACE}${opType.toLowerCase()}`),
    stringField(NODE.opType, opType),
    ...attributes,
  ]);
}

export function initializer(name: string, dataType: number, dims: readonly number[], raw: Uint8Array): Uint8Array {
  return messageField(GRAPH.initializer, [
    ...dims.map((d) => intField(TENSOR.dims, d)),
    intField(TENSOR.dataType, dataType),
    stringField(TENSOR.name, name),
    bytesField(TENSOR.rawData, raw),
  ]);
}

export function floatBytes(values: readonly number[]): Uint8Array {
  const out = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => out.writeFloatLE(v, i * 4));
  return out;
}

export function int64Bytes(values: readonly number[]): Uint8Array {
  const out = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => out.writeBigInt64LE(BigInt(v), i * 8));
  return out;
}

interface GraphInput {
  field: WireField;
  name: string;
  elemType: number | undefined;
  /** Each dimension's own message (TensorShapeProto.Dimension), kept as written. */
  dims: Uint8Array[];
}

function graphInputOf(f: WireField): GraphInput {
  const info = readFields(payload(f, 'graph input'));
  const name = stringOf(first(info, VALUE_INFO.name)) ?? '';
  const typeField = first(info, VALUE_INFO.type);
  const tensor = typeField === undefined ? undefined : first(readFields(payload(typeField, 'input type')), TYPE.tensorType);
  if (tensor === undefined) return { field: f, name, elemType: undefined, dims: [] };
  const tensorFields = readFields(payload(tensor, 'input tensor type'));
  const shape = first(tensorFields, TENSOR_TYPE.shape);
  const dims = shape === undefined ? [] : all(readFields(payload(shape, 'input shape')), SHAPE.dim).map((d) => payload(d, 'dim'));
  return { field: f, name, elemType: intOf(first(tensorFields, TENSOR_TYPE.elemType)), dims };
}

/** A dimension as onnxruntime reports it: a size, or -1 with its symbolic name ('' where it has none). */
function dimOf(dim: Uint8Array): { size: number; symbol: string } {
  const fields = readFields(dim);
  const value = intOf(first(fields, DIM.value));
  if (value !== undefined) return { size: value, symbol: '' };
  return { size: -1, symbol: stringOf(first(fields, DIM.param)) ?? '' };
}

/** The default domain's opset of a model (ModelProto.opset_import with domain '' or absent). */
export function defaultOpset(model: readonly WireField[]): number | undefined {
  for (const f of all(model, MODEL.opsetImport)) {
    const set = readFields(payload(f, 'opset import'));
    const domain = stringOf(first(set, OPSET.domain)) ?? '';
    if (domain === '' || domain === 'ai.onnx') return intOf(first(set, OPSET.version));
  }
  return undefined;
}

/**
 * The model with the uint8 prefix in front of its image input `inputName` (default: its first input that is not
 * an initializer, the one onnxruntime lists first). Throws PrefixError where the model cannot take the prefix:
 * an ONNX IR before 4 or opset before 7, no such input, an input that is not float32 of rank 4 with 3 channels
 * where the layout puts them, or names of ours already in the model; WireError on bytes that are no model.
 */
export function addUint8Prefix(modelBytes: Uint8Array, params: NormalizeParams, inputName?: string): Uint8Model {
  if (Buffer.from(modelBytes.buffer, modelBytes.byteOffset, modelBytes.byteLength).includes(PREFIX_NAMESPACE)) {
    throw new PrefixError(`the model already holds the name ${PREFIX_NAMESPACE}, which the prefix uses`);
  }
  const model = readFields(modelBytes);
  const ir = intOf(first(model, MODEL.irVersion)) ?? 0;
  if (ir < MIN_IR_VERSION) throw new PrefixError(`ONNX IR version ${ir}: the prefix needs ${MIN_IR_VERSION} or later`);
  const opset = defaultOpset(model) ?? 0;
  if (opset < MIN_OPSET) throw new PrefixError(`opset ${opset}: the prefix needs ${MIN_OPSET} or later`);
  const graphFields = all(model, MODEL.graph);
  if (graphFields.length !== 1) throw new PrefixError(`the model has ${graphFields.length} graph fields, not 1`);
  const graph = readFields(payload(graphFields[0], 'graph'));

  const initializers = new Set(all(graph, GRAPH.initializer).map((f) => stringOf(first(readFields(payload(f, 'initializer')), TENSOR.name))));
  const inputs = all(graph, GRAPH.input).map(graphInputOf);
  const target = inputName === undefined ? inputs.find((i) => !initializers.has(i.name)) : inputs.find((i) => i.name === inputName);
  if (target === undefined) throw new PrefixError(`the model has no input ${inputName === undefined ? 'to feed' : `named '${inputName}'`}`);
  if (target.elemType !== FLOAT) throw new PrefixError(`input '${target.name}' is not float32 (ONNX type ${target.elemType ?? 'unknown'})`, true);
  if (target.dims.length !== 4) throw new PrefixError(`input '${target.name}' has rank ${target.dims.length}, not 4`, true);
  const dims = target.dims.map(dimOf);
  const channelAxis = params.layout === 'NCHW' ? 1 : 3;
  const channels = dims[channelAxis]?.size ?? -1;
  if (channels !== 3 && channels !== -1) {
    throw new PrefixError(`input '${target.name}' has ${channels} channels on axis ${channelAxis} (${params.layout}), not 3`);
  }

  // [N, H, W, 3] from the original dims, each kept as written (sizes and symbolic names).
  const [d0, d1, d2, d3] = target.dims as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
  const three = intField(DIM.value, 3);
  const pixelDims = params.layout === 'NCHW' ? [d0, d2, d3, three] : [d0, d1, d2, three];
  const pixelsInput = messageField(GRAPH.input, [
    stringField(VALUE_INFO.name, PIXELS_INPUT),
    messageField(VALUE_INFO.type, [
      messageField(TYPE.tensorType, [
        intField(TENSOR_TYPE.elemType, UINT8),
        messageField(TENSOR_TYPE.shape, pixelDims.map((d) => bytesField(SHAPE.dim, d))),
      ]),
    ]),
  ]);

  const src = params.channelOrder === 'RGB' ? [0, 1, 2] : [2, 1, 0];
  const a = [0, 1, 2].map((t) => params.scale / (params.std[t] as number));
  const b = [0, 1, 2].map((t) => -(params.mean[t] as number) / (params.std[t] as number));
  const constDims = params.layout === 'NCHW' ? [3, 1, 1] : [3];
  const nodes: Uint8Array[] = [];
  const tensors: Uint8Array[] = [];
  // Each step reads the last one's output; the last step is renamed to the original input afterwards.
  const steps: { op: string; inputs: string[]; attributes?: Uint8Array[] }[] = [];
  if (params.channelOrder === 'BGR') {
    tensors.push(initializer(`${PREFIX_NAMESPACE}channels`, INT64, [3], int64Bytes(src)));
    steps.push({ op: 'Gather', inputs: [`${PREFIX_NAMESPACE}channels`], attributes: [attributeInt('axis', 3)] });
  }
  if (params.layout === 'NCHW') steps.push({ op: 'Transpose', inputs: [], attributes: [attributeInts('perm', [0, 3, 1, 2])] });
  steps.push({ op: 'Cast', inputs: [], attributes: [attributeInt('to', FLOAT)] });
  if (a.some((v) => v !== 1)) {
    tensors.push(initializer(`${PREFIX_NAMESPACE}scale`, FLOAT, constDims, floatBytes(a)));
    steps.push({ op: 'Mul', inputs: [`${PREFIX_NAMESPACE}scale`] });
  }
  if (b.some((v) => v !== 0)) {
    tensors.push(initializer(`${PREFIX_NAMESPACE}offset`, FLOAT, constDims, floatBytes(b)));
    steps.push({ op: 'Add', inputs: [`${PREFIX_NAMESPACE}offset`] });
  }
  let previous = PIXELS_INPUT;
  steps.forEach((step, i) => {
    const output = i === steps.length - 1 ? target.name : `${PREFIX_NAMESPACE}${step.op.toLowerCase()}_out`;
    nodes.push(node(step.op, [previous, ...step.inputs], output, step.attributes));
    previous = output;
  });

  // Prefix nodes first (ONNX wants nodes in topological order), the original fields in their order with the image
  // input replaced in place (onnxruntime lists inputs in graph order), the prefix's constants last.
  const graphParts = [...nodes, ...graph.map((f) => (f === target.field ? pixelsInput : f.raw)), ...tensors];
  const modelParts = model.map((f) => (f === graphFields[0] ? messageField(MODEL.graph, graphParts) : f.raw));
  return {
    model: concat(modelParts),
    original: {
      name: target.name,
      type: 'float32',
      shape: dims.map((d) => d.size),
      symbolicShape: dims.map((d) => d.symbol),
    },
  };
}

export { WireError };

/** The prefix input's dims [N, H, W, 3] for the original input's dims in `layout`. */
export function pixelDimsOf(dims: readonly number[], layout: NormalizeParams['layout']): number[] {
  const [n = 1, a = 0, b = 0, c = 0] = dims;
  return layout === 'NCHW' ? [n, b, c, 3] : [n, a, b, 3];
}
