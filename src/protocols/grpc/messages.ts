import { OcularError, describeValue } from '../../errors.js';
import {
  DATATYPES,
  checkShape,
  elementCount,
  nameText,
  tensorFromBinary,
  tensorFromJson,
  tensorToBinary,
  type Datatype,
  type Tensor,
} from '../../core/tensor-codec.js';
import { checkBounds, type ParsedInferRequest, type Parameters, type RequestBounds } from '../oip/request.js';

/**
 * The gRPC messages of inference (inference.proto, as @grpc/proto-loader decodes them with proto.ts's options) to
 * and from the protocol's framework-free request and tensors, so that a gRPC request runs through the same model
 * view (oip/model.ts) as a REST one.
 *
 * Inputs come as typed `contents` (one repeated field per datatype family) or as `raw_input_contents` (one bytes
 * entry per input, in input order, in the binary tensor extension's layout: tensorFromBinary), never both. Every
 * value is checked as the REST JSON path checks it (an INT8 of 300 or a BOOL of 2 is refused), and no element is
 * made before the input's shape is checked. FP16 and BF16 travel raw only, as the protocol says.
 *
 * Outputs are answered as Triton's gRPC frontend answers them: in `raw_output_contents` (the binary layout), unless
 * the request asks for typed contents with `binary_data_output: false` or an output's `binary_data: false`; an
 * FP16 output is always raw (no typed field holds it).
 */

/** An InferParameter as proto-loader gives it (`oneofs: true` names the field that is set). */
export interface GrpcParameter {
  parameter_choice?: string;
  bool_param?: boolean;
  int64_param?: string;
  string_param?: string;
  double_param?: number;
  uint64_param?: string;
}

export interface GrpcContents {
  bool_contents?: boolean[];
  int_contents?: number[];
  int64_contents?: string[];
  uint_contents?: number[];
  uint64_contents?: string[];
  fp32_contents?: number[];
  fp64_contents?: number[];
  bytes_contents?: Buffer[];
}

export interface GrpcInferRequest {
  model_name: string;
  model_version: string;
  id: string;
  parameters: Record<string, GrpcParameter>;
  inputs: { name: string; datatype: string; shape: string[]; parameters: Record<string, GrpcParameter>; contents: GrpcContents | null }[];
  outputs: { name: string; parameters: Record<string, GrpcParameter> }[];
  raw_input_contents: Buffer[];
}

const invalid = (message: string): OcularError => new OcularError('INVALID_REQUEST', message);

const MAX_INPUTS = 64;
const MAX_PARAMETERS = 64;

/** A parameter's value; 64-bit integers as numbers when exact, else refused. */
function parameterValue(key: string, p: GrpcParameter): string | number | boolean {
  switch (p.parameter_choice) {
    case 'bool_param':
      return p.bool_param === true;
    case 'string_param':
      return p.string_param ?? '';
    case 'double_param':
      return p.double_param ?? 0;
    case 'int64_param':
    case 'uint64_param': {
      const text = (p.parameter_choice === 'int64_param' ? p.int64_param : p.uint64_param) ?? '0';
      const n = Number(text);
      if (!Number.isSafeInteger(n)) throw invalid(`parameter ${nameText(key)}: ${capDigits(text)} is past 2^53`);
      return n;
    }
    default:
      throw invalid(`parameter ${nameText(key)} has no value`);
  }
}

const capDigits = (text: string): string => describeValue(text, 24);

export function parametersOf(map: Record<string, GrpcParameter> | undefined): Parameters {
  const entries = Object.entries(map ?? {});
  if (entries.length > MAX_PARAMETERS) throw invalid(`a parameters map holds ${entries.length} entries, more than ${MAX_PARAMETERS}`);
  const out: Parameters = {};
  for (const [key, p] of entries) {
    if (key.length === 0 || key.length > 256) throw invalid('a parameter name is empty or longer than 256 characters');
    out[key] = parameterValue(key, p);
  }
  return out;
}

/** Converts the message's shape (int64 as decimal strings) to numbers, checked as a REST shape is. */
function shapeOf(name: string, shape: readonly string[]): number[] {
  if (shape.length > 16) throw invalid(`input ${nameText(name)}: shape has ${shape.length} dimensions, more than 16`);
  return checkShape(
    name,
    shape.map((d) => Number(d)),
  );
}

function isDatatype(value: string): value is Datatype {
  return (DATATYPES as readonly string[]).includes(value);
}

/** Which typed field holds each datatype (FP16: none, raw only). */
const CONTENT_FIELD: Record<Datatype, keyof GrpcContents | undefined> = {
  BOOL: 'bool_contents',
  UINT8: 'uint_contents',
  UINT16: 'uint_contents',
  UINT32: 'uint_contents',
  UINT64: 'uint64_contents',
  INT8: 'int_contents',
  INT16: 'int_contents',
  INT32: 'int_contents',
  INT64: 'int64_contents',
  FP16: undefined,
  FP32: 'fp32_contents',
  FP64: 'fp64_contents',
  BYTES: 'bytes_contents',
};

/** A tensor from typed contents: only the datatype's own field may be set; its elements checked and counted. */
function tensorFromContents(name: string, datatype: Datatype, shape: number[], contents: GrpcContents): Tensor {
  const field = CONTENT_FIELD[datatype];
  for (const [key, value] of Object.entries(contents) as [keyof GrpcContents, unknown[]][]) {
    if (key !== field && Array.isArray(value) && value.length > 0) {
      throw invalid(`input ${nameText(name)} is ${datatype} but has ${key}${field === undefined ? ` (${datatype} travels in raw_input_contents only)` : ` (expected ${field})`}`);
    }
  }
  if (field === undefined) throw invalid(`input ${nameText(name)}: ${datatype} travels in raw_input_contents only`);
  const values = (contents[field] ?? []) as unknown[];
  const n = elementCount(shape);
  if (values.length !== n) throw invalid(`input ${nameText(name)}: ${field} has ${values.length} elements, its shape holds ${n}`);
  if (datatype === 'BYTES') return { name, datatype, shape, data: (values as Buffer[]).map((b) => Buffer.from(b)) };
  if (datatype === 'INT64' || datatype === 'UINT64') {
    const out = datatype === 'INT64' ? new BigInt64Array(n) : new BigUint64Array(n);
    for (let i = 0; i < n; i++) out[i] = BigInt(values[i] as string);
    return { name, datatype, shape, data: out };
  }
  // The JSON path's checks: integers within their datatype's range, booleans as booleans, floats as numbers.
  return tensorFromJson(name, datatype, shape, values);
}

/**
 * A ModelInferRequest as the protocol's parsed request (what oip/model.ts's infer takes), checked as REST's
 * parseInferRequest checks a body: names unique, datatypes known, shapes bounded and (with `bounds`) fitting the
 * model, contents matching the shapes.
 */
export function parseGrpcInferRequest(req: GrpcInferRequest, bounds?: RequestBounds): ParsedInferRequest {
  if (req.inputs.length === 0) throw invalid('the request has no inputs');
  if (req.inputs.length > MAX_INPUTS) throw invalid(`the request has ${req.inputs.length} inputs, more than ${MAX_INPUTS}`);
  if (req.outputs.length > MAX_INPUTS) throw invalid(`the request asks for ${req.outputs.length} outputs, more than ${MAX_INPUTS}`);
  if (req.id.length > 256) throw invalid('the request id is longer than 256 characters');
  const raw = req.raw_input_contents;
  if (raw.length > 0 && raw.length !== req.inputs.length) {
    throw invalid(`raw_input_contents has ${raw.length} entries for ${req.inputs.length} inputs: one per input, in order`);
  }
  const names = new Set<string>();
  const shapes: number[][] = [];
  // The headers first (names, datatypes, shapes), then the elements: no element is made before every input passes.
  for (const input of req.inputs) {
    if (input.name.length === 0 || input.name.length > 256) throw invalid('an input name is empty or longer than 256 characters');
    if (names.has(input.name)) throw invalid(`input ${nameText(input.name)} is given twice`);
    names.add(input.name);
    if (!isDatatype(input.datatype)) throw invalid(`input ${nameText(input.name)}: datatype ${describeValue(input.datatype)} is not one of ${DATATYPES.join(', ')}`);
    if (raw.length > 0 && input.contents !== null && Object.values(input.contents).some((v) => Array.isArray(v) && v.length > 0)) {
      throw invalid(`input ${nameText(input.name)} has contents while the request has raw_input_contents: use one or the other`);
    }
    const shape = shapeOf(input.name, input.shape);
    // The model's bounds, as a REST header is checked: its inputs and shapes, at most maxBatchSize rows or images.
    if (bounds !== undefined) {
      const parameters = parametersOf(input.parameters);
      checkBounds({ name: input.name, datatype: input.datatype, parameters }, shape, req.inputs.length, bounds, parametersOf(req.parameters)['convert_datatype'] === true);
    }
    shapes.push(shape);
  }
  const inputs = req.inputs.map((input, i): Tensor => {
    const shape = shapes[i] as number[];
    const datatype = input.datatype as Datatype;
    const chunk = raw[i];
    if (chunk !== undefined) return tensorFromBinary(input.name, datatype, shape, chunk);
    return tensorFromContents(input.name, datatype, shape, input.contents ?? {});
  });
  return {
    ...(req.id !== '' ? { id: req.id } : {}),
    parameters: parametersOf(req.parameters),
    inputs,
    inputParameters: req.inputs.map((input) => parametersOf(input.parameters)),
    ...(req.outputs.length > 0 ? { outputs: req.outputs.map((o) => ({ name: o.name, parameters: parametersOf(o.parameters) })) } : {}),
  };
}

/** A parameter value as an InferParameter. */
export function grpcParameter(value: string | number | boolean): GrpcParameter {
  if (typeof value === 'boolean') return { bool_param: value };
  if (typeof value === 'string') return { string_param: value };
  return Number.isSafeInteger(value) ? { int64_param: String(value) } : { double_param: value };
}

/** Whether the answer is typed contents: asked for by the request or an output, and no output is FP16. */
export function answersTyped(req: ParsedInferRequest, outputs: readonly Tensor[]): boolean {
  const asked = req.parameters['binary_data_output'] === false || (req.outputs ?? []).some((o) => o.parameters['binary_data'] === false);
  return asked && outputs.every((t) => t.datatype !== 'FP16');
}

/** A tensor's elements as typed contents (64-bit integers as decimal strings, exact). */
function contentsOf(t: Tensor): GrpcContents {
  const d = t.data;
  if (Array.isArray(d)) return { bytes_contents: d };
  const field = CONTENT_FIELD[t.datatype];
  if (field === undefined) throw new OcularError('INTERNAL', `${t.datatype} has no typed contents`);
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return { [field]: Array.from(d, (v) => v.toString()) };
  if (t.datatype === 'BOOL') return { bool_contents: Array.from(d as Uint8Array, (v) => v !== 0) };
  return { [field]: Array.from(d as Float32Array) };
}

/** Bytes the answer's tensors take, raw: what the response size limit is checked against before it is built. */
export function answerBytes(outputs: readonly Tensor[]): number {
  let n = 0;
  for (const t of outputs) n += Array.isArray(t.data) ? t.data.reduce((s, b) => s + 4 + b.length, 0) : t.data.byteLength;
  return n;
}

export interface GrpcInferResponse {
  model_name: string;
  model_version: string;
  id: string;
  parameters: Record<string, GrpcParameter>;
  outputs: { name: string; datatype: string; shape: number[]; parameters: Record<string, GrpcParameter>; contents?: GrpcContents }[];
  raw_output_contents: Buffer[];
}

export function inferResponseOf(
  model: { name: string; version: string },
  req: ParsedInferRequest,
  outputs: readonly Tensor[],
  outputParameters: readonly Parameters[],
): GrpcInferResponse {
  const typed = answersTyped(req, outputs);
  return {
    model_name: model.name,
    model_version: model.version,
    id: req.id ?? '',
    parameters: {},
    outputs: outputs.map((t, i) => ({
      name: t.name,
      datatype: t.datatype,
      shape: t.shape,
      parameters: Object.fromEntries(Object.entries(outputParameters[i] ?? {}).map(([k, v]) => [k, grpcParameter(v)])),
      ...(typed ? { contents: contentsOf(t) } : {}),
    })),
    raw_output_contents: typed ? [] : outputs.map((t) => tensorToBinary(t)),
  };
}
