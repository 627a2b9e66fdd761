import { z } from 'zod';
import { OcularError, capText, issuesText } from '../../errors.js';
import {
  DATATYPES,
  checkShape,
  elementCount,
  nameText,
  shapeText,
  tensorFromBinary,
  tensorFromJson,
  type Datatype,
  type Tensor,
} from '../../core/tensor-codec.js';
import { parseJsonBytes } from './json-bytes.js';

/**
 * The inference request of the Open Inference Protocol (KServe v2) over REST, with Triton's binary tensor data
 * extension: the body is a JSON header, optionally followed by binary chunks (the header's length in the
 * `Inference-Header-Content-Length` request header), one per input whose `parameters.binary_data_size` says so,
 * in input order. Framework-free: used on the main thread and in the JSON parser worker.
 */

const ParameterValue = z.union([z.string(), z.number(), z.boolean()]);
export const ParametersSchema = z.record(z.string(), ParameterValue).meta({ id: 'V2Parameters' });

export const RequestInputSchema = z
  .object({
    name: z.string().min(1).max(256),
    shape: z.array(z.number().int().min(0)).max(16),
    datatype: z.enum(DATATYPES),
    parameters: ParametersSchema.optional(),
    /** Row-major contents, flat or nested; absent when the tensor is binary (parameters.binary_data_size). */
    data: z.unknown().optional(),
  })
  .meta({ id: 'V2RequestInput' });

export const RequestOutputSchema = z
  .object({ name: z.string().min(1).max(256), parameters: ParametersSchema.optional() })
  .meta({ id: 'V2RequestOutput' });

export const InferenceRequestSchema = z
  .object({
    id: z.string().max(256).optional(),
    parameters: ParametersSchema.optional(),
    inputs: z.array(RequestInputSchema).min(1).max(64),
    outputs: z.array(RequestOutputSchema).max(64).optional(),
  })
  .meta({ id: 'V2InferenceRequest' });

export type InferenceRequestHeader = z.infer<typeof InferenceRequestSchema>;
export type Parameters = z.infer<typeof ParametersSchema>;

export interface ParsedInferRequest {
  id?: string;
  parameters: Parameters;
  inputs: Tensor[];
  /** Per input, its parameters (other than binary_data_size). */
  inputParameters: Parameters[];
  outputs?: { name: string; parameters: Parameters }[];
}

const invalid = (message: string): OcularError => new OcularError('INVALID_REQUEST', message);


/**
 * What the served model allows of a request, checked against its JSON header before any element is made, so that
 * a header asking for a million BYTES elements is a 400 before the first Buffer. Plain data: it travels to the
 * parser worker with the body.
 */
export interface RequestBounds {
  model: string;
  /**
   * The model's batch bound (its first stage's maxBatchSize, what the model configuration reports as
   * max_batch_size): the most BYTES elements (images) of a request, and the most rows (dim 0) of a batched tensor.
   */
  maxBatchSize: number;
  /** The model's tensor inputs (-1: any size), where it takes raw tensors; absent: it takes only encoded images. */
  inputs?: { name: string; shape: number[]; datatype: Datatype }[];
  /** The name of its BYTES input of encoded images; absent: it takes none (BYTES is refused under any name). */
  imageInput?: string;
  /** Whether dim 0 of every input is the batch (-1), so that it is bounded by maxBatchSize. */
  batched: boolean;
}

/** Whether a request's shape fits a model's (same rank, every fixed dim equal). */
export function fitsShape(shape: readonly number[], modelShape: readonly number[]): boolean {
  return shape.length === modelShape.length && shape.every((d, i) => modelShape[i] === -1 || modelShape[i] === d);
}

/**
 * Checks one input's header against the model: a BYTES input holds at most maxBatchSize images; a tensor input is
 * one of the model's, fits its shape and, batched, has at most maxBatchSize rows, so its element count is what the
 * model's shape allows at that batch size wherever the model's dims are fixed.
 */
export function checkBounds(input: Pick<InferenceRequestHeader['inputs'][number], 'name' | 'datatype' | 'parameters'>, shape: number[], count: number, bounds: RequestBounds, convert: boolean): void {
  const model = nameText(bounds.model);
  if (input.datatype === 'BYTES') {
    if (bounds.imageInput === undefined) throw invalid(`model ${model} takes raw tensors, not BYTES`);
    if (input.name !== bounds.imageInput) {
      throw invalid(`input ${nameText(input.name)} is BYTES: encoded images go in input ${nameText(bounds.imageInput)}, alone`);
    }
    if (count > 1) throw invalid('BYTES inputs are encoded images: send exactly one, alone');
    const n = elementCount(shape);
    if (n > bounds.maxBatchSize) {
      throw invalid(`input ${nameText(input.name)} holds ${n} images (BYTES elements); model ${model} takes at most ${bounds.maxBatchSize} (its maxBatchSize)`);
    }
    return;
  }
  if (bounds.inputs === undefined) {
    throw invalid(`model ${model} takes one BYTES input of encoded images; serve its detector and recognizer as tensor models for raw tensors`);
  }
  const meta = bounds.inputs.find((m) => m.name === input.name);
  if (meta === undefined) {
    throw invalid(`model ${model} has no input ${nameText(input.name)} (inputs: ${capText(bounds.inputs.map((m) => m.name).join(', '), 256)})`);
  }
  if (!fitsShape(shape, meta.shape)) {
    throw invalid(`input ${nameText(input.name)}: shape ${shapeText(shape)} does not fit the model's ${shapeText(meta.shape)} (-1: any)`);
  }
  // As Triton: the datatype is the model's, unless the client asked for an (exact) conversion.
  if (input.datatype !== meta.datatype && !(convert || input.parameters?.['convert_datatype'] === true)) {
    throw datatypeMismatch(bounds.model, input.name, input.datatype, meta.datatype);
  }
  const rows = shape[0] ?? 0;
  if (bounds.batched && rows > bounds.maxBatchSize) {
    throw invalid(`input ${nameText(input.name)}: batch size ${rows} (dim 0) is more than model ${model} takes (its maxBatchSize, ${bounds.maxBatchSize})`);
  }
}

/** 400 naming both datatypes, and how to ask for a conversion. */
export function datatypeMismatch(model: string, input: string, given: Datatype, expected: Datatype): OcularError {
  return invalid(
    `input ${nameText(input)} is ${given} but model ${nameText(model)} takes ${expected}: datatypes must match, as Triton requires (or set parameters.convert_datatype: true for an exact conversion)`,
  );
}

/** Parses a header length from the `Inference-Header-Content-Length` request header. */
export function headerLengthOf(value: string | string[] | undefined, bodyBytes: number): number | undefined {
  if (value === undefined) return undefined;
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined || !/^\d{1,12}$/.test(raw.trim())) throw invalid('Inference-Header-Content-Length must be a non-negative integer');
  const n = Number(raw.trim());
  if (n > bodyBytes) throw invalid(`Inference-Header-Content-Length (${n}) is larger than the body (${bodyBytes} bytes)`);
  return n;
}

/** JSON headers of at least this many bytes are parsed by json-bytes.ts; smaller ones by JSON.parse (a few ms). */
export const STOPPABLE_JSON_BYTES = 1024 * 1024;

/**
 * Parses a whole request body: JSON header (all of it, or its first `headerLength` bytes) and binary chunks.
 * With `bounds`, every input's header is checked against the model first; no element is made before every header
 * passes. Throws INVALID_REQUEST naming what is wrong.
 */
export function parseInferRequest(body: Uint8Array, headerLength: number | undefined, bounds?: RequestBounds): ParsedInferRequest {
  const jsonEnd = headerLength ?? body.byteLength;
  let json: unknown;
  try {
    // A large header is parsed by code that Worker.terminate() can stop (json-bytes.ts): past its time limit, a parse
    // thread is ended at once instead of holding its slot for as long as V8's JSON.parse takes.
    json = jsonEnd >= STOPPABLE_JSON_BYTES ? parseJsonBytes(body, 0, jsonEnd) : JSON.parse(Buffer.from(body.buffer, body.byteOffset, jsonEnd).toString('utf8'));
  } catch (err) {
    throw invalid(`the inference request is not valid JSON: ${capText((err as Error).message, 160)}`);
  }
  const parsed = InferenceRequestSchema.safeParse(json);
  if (!parsed.success) throw invalid(`the inference request is invalid: ${issuesText(parsed.error.issues)}`);
  const header = parsed.data;

  // The header alone: names, shapes, the model's bounds, where each binary chunk lies.
  const names = new Set<string>();
  let at = jsonEnd;
  const chunks: (Uint8Array | undefined)[] = [];
  const shapes: number[][] = [];
  const inputParameters: Parameters[] = [];
  for (const input of header.inputs) {
    const name = nameText(input.name);
    if (names.has(input.name)) throw invalid(`input ${name} is given twice`);
    names.add(input.name);
    const shape = checkShape(input.name, input.shape);
    if (bounds !== undefined) checkBounds(input, shape, header.inputs.length, bounds, header.parameters?.['convert_datatype'] === true);
    shapes.push(shape);
    const { binary_data_size: size, ...rest } = input.parameters ?? {};
    inputParameters.push(rest);
    if (size !== undefined) {
      if (headerLength === undefined) throw invalid(`input ${name} has binary_data_size but the request has no Inference-Header-Content-Length`);
      if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`input ${name}: binary_data_size must be a non-negative integer`);
      if (input.data !== undefined) throw invalid(`input ${name} has both data and binary_data_size`);
      if (at + size > body.byteLength) throw invalid(`input ${name}: binary_data_size ${size} runs past the end of the body`);
      chunks.push(body.subarray(at, at + size));
      at += size;
    } else {
      if (input.data === undefined) throw invalid(`input ${name} has no data`);
      chunks.push(undefined);
    }
  }
  if (at !== body.byteLength) throw invalid(`the body has ${body.byteLength - at} bytes of binary data no input claims`);

  // Then the elements, each tensor at most as large as its checked shape.
  const inputs: Tensor[] = header.inputs.map((input, i) => {
    const shape = shapes[i] as number[];
    const chunk = chunks[i];
    return chunk !== undefined
      ? tensorFromBinary(input.name, input.datatype, shape, chunk)
      : tensorFromJson(input.name, input.datatype, shape, input.data);
  });
  return {
    ...(header.id !== undefined ? { id: header.id } : {}),
    parameters: header.parameters ?? {},
    inputs,
    inputParameters,
    ...(header.outputs !== undefined
      ? { outputs: header.outputs.map((o) => ({ name: o.name, parameters: o.parameters ?? {} })) }
      : {}),
  };
}
