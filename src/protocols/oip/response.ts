import { tensorToBinary, tensorToJsonText, type Datatype, type Tensor } from '../../core/tensor-codec.js';
import type { Parameters } from './request.js';

/**
 * The v2 inference answer, written from the inference result: JSON, or (binary tensor data extension) a JSON
 * header followed by the binary outputs, in order. A pure function over plain, structured-cloneable data (typed
 * arrays, Buffers, strings), so that a large answer can be written off the main thread.
 *
 * JSON `data` is written as text (tensorToJsonText) so that INT64/UINT64 values keep every digit, which
 * JSON.stringify cannot write; the rest of the document is JSON.stringify's. The answer has the shape of
 * InferenceResponseSchema (schemas.ts), checked by the tests.
 */

export interface InferResponseInput {
  modelName: string;
  modelVersion: string;
  /** The request's id, echoed. */
  id?: string | undefined;
  outputs: readonly Tensor[];
  /** Per output, its response parameters. */
  outputParameters: readonly Parameters[];
  /** Per output, whether it is asked for in binary (undefined: as `binaryAll`). */
  binaryOutputs: readonly (boolean | undefined)[];
  /** The request's `binary_data_output` parameter. */
  binaryAll: boolean;
}

export type InferResponse =
  | { type: 'json'; body: string }
  /** `headerLength`: the JSON header's bytes at the start of body (Inference-Header-Content-Length). */
  | { type: 'binary'; body: Buffer; headerLength: number };

/** `{...object, key: <raw JSON text>}`: object's JSON with one more member whose value is already JSON text. */
function withRawMember(object: object, key: string, rawJson: string): string {
  const text = JSON.stringify(object);
  return `${text.length > 2 ? `${text.slice(0, -1)},` : '{'}${JSON.stringify(key)}:${rawJson}}`;
}

/**
 * BYTES elements as Buffers: a result cloned to or from another thread holds plain Uint8Arrays (structured cloning
 * does not keep the Buffer class); a view, no copy.
 */
function withBuffers(t: Tensor): Tensor {
  if (!Array.isArray(t.data) || t.data.every((b) => Buffer.isBuffer(b))) return t;
  return { ...t, data: t.data.map((b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)) };
}

/**
 * Most bytes one element of `datatype` takes in JSON `data`, with its comma: a float is written as the shortest
 * double that reads back (at most 24 characters: -2.2250738585072014e-308; FP32 and FP16 values are widened to
 * doubles first), an integer with every digit. BYTES: see jsonBytesBound.
 */
const JSON_ELEMENT_BYTES: Record<Exclude<Datatype, 'BYTES'>, number> = {
  BOOL: 6,
  UINT8: 4,
  UINT16: 6,
  UINT32: 11,
  UINT64: 21,
  INT8: 5,
  INT16: 7,
  INT32: 12,
  INT64: 21,
  FP16: 25,
  FP32: 25,
  FP64: 25,
};

/** The elements written per part of a streamed answer (a few milliseconds of the main thread each). */
export const PART_ELEMENTS = 4_096;

function isBinary(input: InferResponseInput, i: number): boolean {
  const flag = input.binaryOutputs[i];
  return flag === true || (flag === undefined && input.binaryAll);
}

/** The tensor's size in the binary layout (tensorToBinary's length), without writing it. */
function binaryBytes(t: Tensor): number {
  if (Array.isArray(t.data)) return t.data.reduce((n, b) => n + 4 + b.length, 0);
  return t.data.byteLength;
}

/** Most bytes of the tensor's JSON `data`: per element, its datatype's bound; a BYTES element, 6 per byte (\u00XX) and its quotes. */
function jsonBytesBound(t: Tensor): number {
  if (Array.isArray(t.data)) return 2 + t.data.reduce((n, b) => n + 6 * b.length + 3, 0);
  return 2 + t.data.length * JSON_ELEMENT_BYTES[t.datatype as Exclude<Datatype, 'BYTES'>];
}

/**
 * One answer, planned: its kind, the JSON header's length for a binary answer, an upper bound of its size (exact for
 * binary data) known before any of it is written, and its parts, written on demand, in order. Their concatenation
 * is writeInferResponse's body.
 */
export interface InferResponsePlan {
  type: 'json' | 'binary';
  /** The JSON header's bytes (Inference-Header-Content-Length) for a binary answer, else 0; writes the header. */
  headerLength: number;
  /** At least the answer's size in bytes; exact for binary outputs, a bound per element for JSON ones. */
  boundBytes: number;
  parts(partElements?: number): Generator<string | Buffer>;
}

export function planInferResponse(input: InferResponseInput): InferResponsePlan {
  const outputs = input.outputs.map(withBuffers);
  // Each output's JSON without its data: the header of a binary output, or the text the data goes into.
  const metas = outputs.map((o, i) => {
    const params = { ...input.outputParameters[i] };
    const meta = { name: o.name, datatype: o.datatype, shape: o.shape };
    if (isBinary(input, i)) return JSON.stringify({ ...meta, parameters: { ...params, binary_data_size: binaryBytes(o) } });
    return withRawMember({ ...meta, ...(Object.keys(params).length > 0 ? { parameters: params } : {}) }, 'data', '');
  });
  const head = {
    model_name: input.modelName,
    model_version: input.modelVersion,
    ...(input.id !== undefined ? { id: input.id } : {}),
  };
  // `{...head,"outputs":[` + outputs joined by commas + `]}`
  const [open, close] = withRawMember(head, 'outputs', '[\u0000]').split('\u0000') as [string, string];
  const binary = outputs.some((_, i) => isBinary(input, i));
  const metaBytes = metas.reduce((n, m) => n + Buffer.byteLength(m) + 1, Buffer.byteLength(open) + Buffer.byteLength(close));
  const boundBytes = metaBytes + outputs.reduce((n, o, i) => n + (isBinary(input, i) ? binaryBytes(o) : jsonBytesBound(o)), 0);
  // A binary answer's header holds the JSON data of the outputs not asked for in binary: written once, on demand.
  let header: string | undefined;
  const headerText = (): string =>
    (header ??= `${open}${outputs.map((o, i) => (isBinary(input, i) ? metas[i] : `${(metas[i] as string).slice(0, -1)}${tensorToJsonText(o)}}`)).join(',')}${close}`);

  function* jsonParts(partElements: number): Generator<string> {
    yield open;
    for (const [i, o] of outputs.entries()) {
      const meta = metas[i] as string;
      // meta ends with `"data":}`: the data goes before the last brace.
      yield `${i > 0 ? ',' : ''}${meta.slice(0, -1)}[`;
      const n = o.data.length;
      for (let at = 0; at < n; at += partElements) {
        const end = Math.min(n, at + partElements);
        const data = Array.isArray(o.data) ? o.data.slice(at, end) : o.data.subarray(at, end);
        const text = tensorToJsonText({ ...o, shape: [end - at], data });
        yield `${at > 0 ? ',' : ''}${text.slice(1, -1)}`;
      }
      yield ']}';
    }
    yield close;
  }

  function* binaryParts(): Generator<string | Buffer> {
    yield headerText();
    for (const [i, o] of outputs.entries()) if (isBinary(input, i)) yield tensorToBinary(o);
  }

  return {
    type: binary ? 'binary' : 'json',
    get headerLength() {
      return binary ? Buffer.byteLength(headerText()) : 0;
    },
    boundBytes,
    parts: (partElements = PART_ELEMENTS) => (binary ? binaryParts() : jsonParts(partElements)),
  };
}

export function writeInferResponse(input: InferResponseInput): InferResponse {
  const plan = planInferResponse(input);
  const body = writePlanned(plan);
  return typeof body === 'string' ? { type: 'json', body } : { type: 'binary', body, headerLength: plan.headerLength };
}

/** A planned answer written whole: the JSON text, or the header and binary outputs in one Buffer. */
export function writePlanned(plan: InferResponsePlan): string | Buffer {
  const parts = [...plan.parts(Number.MAX_SAFE_INTEGER)];
  if (plan.type === 'json') return parts.join('');
  return Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)));
}
