import { z } from 'zod';
import { OcularError } from '../errors.js';
import { DATATYPES, checkShape, tensorFromBinary, tensorFromJson, type Tensor } from './tensor-codec.js';

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

/** Parses a header length from the `Inference-Header-Content-Length` request header. */
export function headerLengthOf(value: string | string[] | undefined, bodyBytes: number): number | undefined {
  if (value === undefined) return undefined;
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined || !/^\d{1,12}$/.test(raw.trim())) throw invalid('Inference-Header-Content-Length must be a non-negative integer');
  const n = Number(raw.trim());
  if (n > bodyBytes) throw invalid(`Inference-Header-Content-Length (${n}) is larger than the body (${bodyBytes} bytes)`);
  return n;
}

/**
 * Parses a whole request body: JSON header (all of it, or its first `headerLength` bytes) and binary chunks.
 * Throws INVALID_REQUEST naming what is wrong.
 */
export function parseInferRequest(body: Uint8Array, headerLength: number | undefined): ParsedInferRequest {
  const jsonEnd = headerLength ?? body.byteLength;
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(body.buffer, body.byteOffset, jsonEnd).toString('utf8'));
  } catch (err) {
    throw invalid(`the inference request is not valid JSON: ${(err as Error).message}`);
  }
  const parsed = InferenceRequestSchema.safeParse(json);
  if (!parsed.success) {
    throw invalid(
      `the inference request is invalid: ${parsed.error.issues
        .slice(0, 5)
        .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
        .join('; ')}`,
    );
  }
  const header = parsed.data;
  const names = new Set<string>();
  let at = jsonEnd;
  const inputs: Tensor[] = [];
  const inputParameters: Parameters[] = [];
  for (const input of header.inputs) {
    if (names.has(input.name)) throw invalid(`input "${input.name}" is given twice`);
    names.add(input.name);
    const shape = checkShape(input.name, input.shape);
    const { binary_data_size: size, ...rest } = input.parameters ?? {};
    inputParameters.push(rest);
    if (size !== undefined) {
      if (headerLength === undefined) throw invalid(`input "${input.name}" has binary_data_size but the request has no Inference-Header-Content-Length`);
      if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`input "${input.name}": binary_data_size must be a non-negative integer`);
      if (input.data !== undefined) throw invalid(`input "${input.name}" has both data and binary_data_size`);
      if (at + size > body.byteLength) throw invalid(`input "${input.name}": binary_data_size ${size} runs past the end of the body`);
      inputs.push(tensorFromBinary(input.name, input.datatype, shape, body.subarray(at, at + size)));
      at += size;
    } else {
      if (input.data === undefined) throw invalid(`input "${input.name}" has no data`);
      inputs.push(tensorFromJson(input.name, input.datatype, shape, input.data));
    }
  }
  if (at !== body.byteLength) throw invalid(`the body has ${body.byteLength - at} bytes of binary data no input claims`);
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
