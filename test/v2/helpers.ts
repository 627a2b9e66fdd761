/**
 * Shared pieces of the v2 tests: tiny ONNX models written by hand with onnx-proto's encoder, manifests for them,
 * and a client for the binary tensor data extension.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import { InferenceResponseSchema } from '../../src/protocols/oip/schemas.js';

const { onnx } = onnxProto;
export const FLOAT = 1;
export const BOOL = 9;

type Dim = number | string;
function valueInfo(name: string, elemType: number, dims: Dim[]) {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

/** Encodes a one-graph model (opset 13). */
export function encodeModel(
  nodes: { opType: string; input: string[]; output: string[] }[],
  inputs: [string, number, Dim[]][],
  outputs: [string, number, Dim[]][],
): Buffer {
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'ocular-tests',
    opsetImport: [{ domain: '', version: 13 }],
    graph: {
      name: 'tiny',
      node: nodes.map((n, i) => ({ ...n, name: `n${i}` })),
      input: inputs.map(([n, t, d]) => valueInfo(n, t, d)),
      output: outputs.map(([n, t, d]) => valueInfo(n, t, d)),
    },
  });
  return Buffer.from(onnx.ModelProto.encode(model).finish());
}

/**
 * The specification's example model: input0 FP32 [-1, 2] and input1 BOOL [3]; output0 = Identity(input0),
 * output1 = Not(input1).
 */
export function specExampleModel(): Buffer {
  return encodeModel(
    [
      { opType: 'Identity', input: ['input0'], output: ['output0'] },
      { opType: 'Not', input: ['input1'], output: ['output1'] },
    ],
    [
      ['input0', FLOAT, ['N', 2]],
      ['input1', BOOL, [3]],
    ],
    [
      ['output0', FLOAT, ['N', 2]],
      ['output1', BOOL, [3]],
    ],
  );
}

/** C = A + B, FP32 [-1, 4]: batchable. */
export function addModel(): Buffer {
  return encodeModel([{ opType: 'Add', input: ['A', 'B'], output: ['C'] }], [
    ['A', FLOAT, ['N', 4]],
    ['B', FLOAT, ['N', 4]],
  ], [['C', FLOAT, ['N', 4]]]);
}

/** C = A + B, FP32 [-1, -1]: one row may be as wide as the body allows. */
export function wideAddModel(): Buffer {
  return encodeModel([{ opType: 'Add', input: ['A', 'B'], output: ['C'] }], [
    ['A', FLOAT, ['N', 'W']],
    ['B', FLOAT, ['N', 'W']],
  ], [['C', FLOAT, ['N', 'W']]]);
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Writes the tiny models and a manifest serving them as `tensor` models into dir; returns the manifest path. */
export function writeTinyManifest(dir: string, edit: (models: Record<string, unknown>[]) => void = () => {}): string {
  const spec = specExampleModel();
  const add = addModel();
  writeFileSync(join(dir, 'spec.onnx'), spec);
  writeFileSync(join(dir, 'add.onnx'), add);
  const models: Record<string, unknown>[] = [
    { name: 'mymodel', version: '1', task: 'tensor', source: 'spec.onnx', sha256: sha256(spec), warmupShapes: { input0: [1, 2], input1: [3] } },
    {
      name: 'add',
      version: '1',
      task: 'tensor',
      source: 'add.onnx',
      sha256: sha256(add),
      warmupShapes: { A: [1, 4], B: [1, 4] },
      batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: 64 },
    },
  ];
  edit(models);
  const path = join(dir, 'tiny.manifest.json');
  writeFileSync(path, JSON.stringify({ models }, null, 2));
  return path;
}

export interface BinaryTensor {
  name: string;
  datatype: string;
  shape: number[];
  bytes: Buffer;
}

/** A request body of the binary tensor data extension: JSON header, then every input's bytes. */
export function binaryRequest(
  inputs: BinaryTensor[],
  extra: Record<string, unknown> = {},
): { body: Buffer; headers: Record<string, string> } {
  const header = Buffer.from(
    JSON.stringify({
      ...extra,
      inputs: inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape, parameters: { binary_data_size: i.bytes.length } })),
    }),
  );
  return {
    body: Buffer.concat([header, ...inputs.map((i) => i.bytes)]),
    headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
  };
}

/** BYTES elements in the binary layout: 4-byte little-endian length, then the bytes. */
export function bytesElements(elements: Buffer[]): Buffer {
  return Buffer.concat(
    elements.flatMap((e) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(e.length);
      return [len, e];
    }),
  );
}

export type InferenceResponse = ReturnType<typeof InferenceResponseSchema.parse>;

/** Splits a response (JSON, or JSON header + binary outputs) into the validated header and each output's bytes. */
export function readResponse(body: Buffer, headerLength: string | string[] | number | undefined): { json: InferenceResponse; binary: Map<string, Buffer> } {
  const n = headerLength === undefined ? body.length : Number(headerLength);
  const json = InferenceResponseSchema.parse(JSON.parse(body.subarray(0, n).toString('utf8')));
  const binary = new Map<string, Buffer>();
  let at = n;
  for (const o of json.outputs) {
    const size = o.parameters?.['binary_data_size'];
    if (typeof size !== 'number') continue;
    binary.set(o.name, body.subarray(at, at + size));
    at += size;
  }
  if (at !== body.length) throw new Error(`response has ${body.length - at} unclaimed bytes`);
  return { json, binary };
}

export function float32Of(b: Buffer): Float32Array {
  const copy = new Uint8Array(b.length);
  copy.set(b);
  return new Float32Array(copy.buffer);
}
