import { open, type FileHandle } from 'node:fs/promises';
import { readFields, stringOf, WireError, type WireField } from './onnx-wire.js';
import type { TensorMeta } from './types.js';

/**
 * What an ONNX file says about itself beyond what a session reports: producer, opsets, the custom metadata
 * properties exporters write (Ultralytics: `task`, `names`, `imgsz`, `stride`, ...), the operator types of its
 * graph, and its graph inputs and outputs in onnxruntime's terms (TensorMeta). Read from the protobuf wire format
 * (onnx-wire.ts), so fields of ONNX versions newer than any schema we know are skipped, not refused.
 *
 * Three readers: `summarizeOnnx` walks a whole model held in memory (models:inspect); `readOnnxHeader` reads only the
 * top-level fields of a file, skipping the graph (weights included) with positioned reads, for the server's startup
 * check, which takes the inputs and outputs from the session instead; `readOnnxInputs` reads only the graph's inputs
 * the same way, for what must be decided before the session exists.
 */

export interface OnnxHeader {
  irVersion: number | undefined;
  producerName: string;
  producerVersion: string;
  /** Opset per domain; the default domain is ''. */
  opsets: Record<string, number>;
  /** ModelProto.metadata_props, in file order; a repeated key keeps its last value. */
  metadata: Record<string, string>;
  docString: string;
}

export interface OnnxSummary extends OnnxHeader {
  inputs: TensorMeta[];
  outputs: TensorMeta[];
  /** Node count per operator type (a function's nodes are not counted). */
  ops: Record<string, number>;
  initializers: number;
}

/** ModelProto, GraphProto, ... field numbers (onnx/onnx.proto). */
const MODEL = { irVersion: 1, producerName: 2, producerVersion: 3, docString: 6, graph: 7, opsetImport: 8, metadataProps: 14 } as const;
const GRAPH = { node: 1, initializer: 5, input: 11, output: 12 } as const;
const NODE = { opType: 4, domain: 7 } as const;
const TENSOR_NAME = 8;
const KEY_VALUE = { key: 1, value: 2 } as const;
const OPSET = { domain: 1, version: 2 } as const;
const VALUE_INFO = { name: 1, type: 2 } as const;
const TYPE_TENSOR = 1;
const TENSOR_TYPE = { elemType: 1, shape: 2 } as const;
const SHAPE_DIM = 1;
const DIM = { value: 1, param: 2 } as const;

/** TensorProto.DataType to onnxruntime's type names. */
const ELEM_TYPES: Record<number, string> = {
  1: 'float32',
  2: 'uint8',
  3: 'int8',
  4: 'uint16',
  5: 'int16',
  6: 'int32',
  7: 'int64',
  8: 'string',
  9: 'bool',
  10: 'float16',
  11: 'float64',
  12: 'uint32',
  13: 'uint64',
  16: 'bfloat16',
};

const first = (fields: readonly WireField[], n: number): WireField | undefined => fields.find((f) => f.field === n);
const all = (fields: readonly WireField[], n: number): WireField[] => fields.filter((f) => f.field === n);
const intOf = (f: WireField | undefined): number | undefined => (f !== undefined && typeof f.value === 'number' ? f.value : undefined);
const bytesOf = (f: WireField | undefined): Uint8Array | undefined => (f !== undefined && f.value instanceof Uint8Array ? f.value : undefined);

function headerOf(fields: readonly WireField[]): OnnxHeader {
  const opsets: Record<string, number> = {};
  for (const f of all(fields, MODEL.opsetImport)) {
    const set = readFields(bytesOf(f) ?? new Uint8Array(0));
    const domain = stringOf(first(set, OPSET.domain)) ?? '';
    const version = intOf(first(set, OPSET.version));
    if (version !== undefined) opsets[domain === 'ai.onnx' ? '' : domain] = version;
  }
  const metadata: Record<string, string> = {};
  for (const f of all(fields, MODEL.metadataProps)) {
    const entry = readFields(bytesOf(f) ?? new Uint8Array(0));
    const key = stringOf(first(entry, KEY_VALUE.key));
    if (key !== undefined) metadata[key] = stringOf(first(entry, KEY_VALUE.value)) ?? '';
  }
  return {
    irVersion: intOf(first(fields, MODEL.irVersion)),
    producerName: stringOf(first(fields, MODEL.producerName)) ?? '',
    producerVersion: stringOf(first(fields, MODEL.producerVersion)) ?? '',
    opsets,
    metadata,
    docString: stringOf(first(fields, MODEL.docString)) ?? '',
  };
}

/** A graph input or output as onnxruntime reports it: dynamic dims -1 with their symbolic names. */
function valueInfoOf(bytes: Uint8Array): TensorMeta {
  const info = readFields(bytes);
  const name = stringOf(first(info, VALUE_INFO.name)) ?? '';
  const typeBytes = bytesOf(first(info, VALUE_INFO.type));
  const tensor = typeBytes === undefined ? undefined : bytesOf(first(readFields(typeBytes), TYPE_TENSOR));
  if (tensor === undefined) return { name, type: 'non-tensor', shape: [], symbolicShape: [] };
  const tensorFields = readFields(tensor);
  const elem = intOf(first(tensorFields, TENSOR_TYPE.elemType));
  const shapeBytes = bytesOf(first(tensorFields, TENSOR_TYPE.shape));
  const shape: number[] = [];
  const symbolicShape: string[] = [];
  for (const d of shapeBytes === undefined ? [] : all(readFields(shapeBytes), SHAPE_DIM)) {
    const dim = readFields(bytesOf(d) ?? new Uint8Array(0));
    const value = intOf(first(dim, DIM.value));
    shape.push(value ?? -1);
    symbolicShape.push(value !== undefined ? '' : (stringOf(first(dim, DIM.param)) ?? ''));
  }
  return { name, type: elem === undefined ? 'unknown' : (ELEM_TYPES[elem] ?? `elem-type-${elem}`), shape, symbolicShape };
}

/**
 * The summary of a whole model in memory. Graph inputs that are initializers (old exporters list weights as inputs)
 * are left out, as onnxruntime leaves them out. Throws WireError on bytes that are no ONNX model.
 */
export function summarizeOnnx(bytes: Uint8Array): OnnxSummary {
  const fields = readFields(bytes);
  const graphBytes = bytesOf(first(fields, MODEL.graph));
  if (graphBytes === undefined) throw new WireError('no graph: not an ONNX model');
  const graph = readFields(graphBytes);
  const initializerNames = new Set<string>();
  const initializers = all(graph, GRAPH.initializer);
  for (const f of initializers) {
    // The name (field 8) precedes raw_data (9); reading the fields of each initializer costs no copy.
    const name = stringOf(first(readFields(bytesOf(f) ?? new Uint8Array(0)), TENSOR_NAME));
    if (name !== undefined) initializerNames.add(name);
  }
  const ops: Record<string, number> = {};
  for (const f of all(graph, GRAPH.node)) {
    const node = readFields(bytesOf(f) ?? new Uint8Array(0));
    const domain = stringOf(first(node, NODE.domain)) ?? '';
    const op = `${domain === '' || domain === 'ai.onnx' ? '' : `${domain}::`}${stringOf(first(node, NODE.opType)) ?? '?'}`;
    ops[op] = (ops[op] ?? 0) + 1;
  }
  return {
    ...headerOf(fields),
    inputs: all(graph, GRAPH.input)
      .map((f) => valueInfoOf(bytesOf(f) ?? new Uint8Array(0)))
      .filter((i) => !initializerNames.has(i.name)),
    outputs: all(graph, GRAPH.output).map((f) => valueInfoOf(bytesOf(f) ?? new Uint8Array(0))),
    ops,
    initializers: initializers.length,
  };
}

/** Fields read larger than this are refused: no model has a header field or a graph input this large. */
const MAX_HEADER_FIELD_BYTES = 64 * 1024 * 1024;

/**
 * The header of an ONNX file: every top-level field but the graph, read with positioned reads (the graph, which
 * holds the weights, is skipped over, never read). Throws WireError on a file that is no well-formed message.
 */
export async function readOnnxHeader(path: string): Promise<OnnxHeader> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const { kept } = await walkFields(file, 0, size, (field) => field !== MODEL.graph);
    return headerOf(readFields(Buffer.concat(kept)));
  } finally {
    await file.close();
  }
}

/**
 * The graph inputs an ONNX file declares (as summarizeOnnx reads them, initializers listed as inputs included),
 * read with positioned reads: the graph's own fields are walked, and only its inputs are read. What a stage needs
 * to know of its model before a session exists (stage-loader.ts: whether the client sets its input's size).
 */
export async function readOnnxInputs(path: string): Promise<TensorMeta[]> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const { graph } = await walkFields(file, 0, size, () => false);
    if (graph === undefined) throw new WireError('no graph: not an ONNX model');
    const { kept } = await walkFields(file, graph.start, graph.end, (field) => field === GRAPH.input);
    return all(readFields(Buffer.concat(kept)), GRAPH.input).map((f) => valueInfoOf(bytesOf(f) ?? new Uint8Array(0)));
  } finally {
    await file.close();
  }
}

/**
 * Walks the fields of the message between `start` and `end` of the file, one positioned read per field head: the
 * bytes of each field `keep` accepts (head included, so that they parse as the same message), and where the content
 * of the top-level graph field lies. A kept field larger than MAX_HEADER_FIELD_BYTES is refused.
 */
async function walkFields(
  file: FileHandle,
  start: number,
  end: number,
  keep: (field: number) => boolean,
): Promise<{ kept: Uint8Array[]; graph?: { start: number; end: number } }> {
  const kept: Uint8Array[] = [];
  let graph: { start: number; end: number } | undefined;
  const head = Buffer.alloc(20);
  let pos = start;
  while (pos < end) {
    const { bytesRead } = await file.read(head, 0, Math.min(head.length, end - pos), pos);
    const [tag, afterTag] = varintAt(head, 0, bytesRead);
    const field = Math.floor(tag / 8);
    const wireType = tag % 8;
    let fieldEnd: number;
    if (wireType === 0) fieldEnd = pos + varintAt(head, afterTag, bytesRead)[1];
    else if (wireType === 1) fieldEnd = pos + afterTag + 8;
    else if (wireType === 5) fieldEnd = pos + afterTag + 4;
    else if (wireType === 2) {
      const [length, afterLength] = varintAt(head, afterTag, bytesRead);
      fieldEnd = pos + afterLength + length;
      if (keep(field) && length > MAX_HEADER_FIELD_BYTES) throw new WireError(`field ${field} of ${length} bytes`);
      if (start === 0 && field === MODEL.graph) graph = { start: pos + afterLength, end: fieldEnd };
    } else throw new WireError(`unsupported wire type ${wireType} (field ${field})`);
    if (fieldEnd > end) throw new WireError(`field ${field} runs past the end of its message`);
    if (keep(field)) {
      const raw = Buffer.alloc(fieldEnd - pos);
      await file.read(raw, 0, raw.length, pos);
      kept.push(raw);
    }
    pos = fieldEnd;
  }
  return graph === undefined ? { kept } : { kept, graph };
}

function varintAt(buf: Uint8Array, start: number, end: number): [number, number] {
  let value = 0;
  let factor = 1;
  for (let pos = start; pos < end && pos < start + 10; pos++) {
    const byte = buf[pos] as number;
    value += (byte & 0x7f) * factor;
    if (byte < 0x80) {
      if (value > Number.MAX_SAFE_INTEGER) throw new WireError('varint past 2^53');
      return [value, pos + 1];
    }
    factor *= 128;
  }
  throw new WireError('file ends inside a varint');
}
