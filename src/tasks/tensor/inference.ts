import { resolve } from 'node:path';
import type { ParsedInferRequest, Parameters } from '../../core/infer-request.js';
import type { ModelHandle } from '../../core/registry.js';
import type { Logger } from '../../core/stage.js';
import { tensorBatcherOf, type TensorFeed } from '../../core/tensor-batcher.js';
import {
  convertTensor,
  datatypeOfOrt,
  outputTensor,
  type Datatype,
  type NumericArray,
  type Tensor,
} from '../../core/tensor-codec.js';
import type { Telemetry, Timings } from '../../core/telemetry.js';
import type { ExactData, Outputs, TensorMeta } from '../../core/types.js';
import { OcularError } from '../../errors.js';
import { readLabels } from '../labels.js';
import { elapsedMs, throwIfAborted } from '../pipeline.js';
import type { DecodeLimits, ImagePreparer } from '../preprocess/image.js';
import { FEEDABLE_TYPES } from './pipeline.js';

/**
 * The Open Inference Protocol view of a served model: its metadata (inputs and outputs with v2 datatypes and -1
 * for dynamic dims) and inference on it.
 *
 * - Every model but `ocr` takes raw tensors: they are checked against the model's inputs (names, rank, fixed
 *   dims), converted to the model's element type, and run through the stage's tensor batcher.
 * - Image models also take a BYTES input of encoded images (JPEG, PNG, WebP...), one per element, preprocessed
 *   as the manifest says and run through the stage's image batcher (like /v1 predict); the answer is the model's
 *   raw outputs for the batch of images. `ocr` takes only images, and answers one JSON result per image (the /v1
 *   answer) in a BYTES output `result`.
 * - An output requested with `parameters.classification: k` is answered in Triton's classification extension
 *   format: BYTES strings "value:index[:label]", the top k of the output's last dimension per batch row.
 */

export const PLATFORM = 'onnxruntime_onnx';

export interface V2TensorMeta {
  name: string;
  datatype: Datatype;
  shape: number[];
}

export interface V2Metadata {
  name: string;
  versions: string[];
  platform: string;
  inputs: V2TensorMeta[];
  outputs: V2TensorMeta[];
}

export interface InferContext {
  signal: AbortSignal;
  timings: Timings;
  limits: DecodeLimits;
  prepare: ImagePreparer;
  baseDir: string;
  telemetry: Telemetry;
  logger: Logger;
}

export interface InferResult {
  outputs: Tensor[];
  /** Per output, its response parameters (the request's, minus binary_data and classification). */
  outputParameters: Parameters[];
}

const IMAGE_IO: V2TensorMeta = { name: 'image', datatype: 'BYTES', shape: [-1] };
const RESULT_IO: V2TensorMeta = { name: 'result', datatype: 'BYTES', shape: [-1] };

function v2Meta(m: TensorMeta): V2TensorMeta {
  const datatype = datatypeOfOrt(m.type);
  if (datatype === undefined) throw new OcularError('INTERNAL', `tensor ${m.name} has type ${m.type}, which v2 cannot name`);
  return { name: m.name, datatype, shape: m.shape };
}

export function metadataOf(handle: ModelHandle): V2Metadata {
  const base = { name: handle.name, versions: [handle.version], platform: PLATFORM };
  const stage = handle.stages[0];
  if (handle.entry.task === 'ocr' || stage === undefined) {
    return { ...base, inputs: handle.entry.task === 'ocr' ? [IMAGE_IO] : [], outputs: handle.entry.task === 'ocr' ? [RESULT_IO] : [] };
  }
  return { ...base, inputs: stage.pool.info.inputs.map(v2Meta), outputs: stage.pool.info.outputs.map(v2Meta) };
}

const labelCache = new WeakMap<ModelHandle, Promise<string[]>>();

function labelsOf(handle: ModelHandle, baseDir: string): Promise<string[]> | undefined {
  const entry = handle.entry;
  if (entry.task !== 'image-classification' && entry.task !== 'object-detection') return undefined;
  let p = labelCache.get(handle);
  if (p === undefined) {
    p = readLabels(resolve(baseDir, entry.labels));
    labelCache.set(handle, p);
  }
  return p;
}

const invalid = (message: string): OcularError => new OcularError('INVALID_REQUEST', message);

export async function infer(handle: ModelHandle & { pipeline: NonNullable<ModelHandle['pipeline']> }, req: ParsedInferRequest, ctx: InferContext): Promise<InferResult> {
  const meta = metadataOf(handle);
  const requested = req.outputs ?? meta.outputs.map((o) => ({ name: o.name, parameters: {} as Parameters }));
  for (const o of requested) {
    if (!meta.outputs.some((m) => m.name === o.name)) {
      throw invalid(`model "${handle.name}" has no output "${o.name}" (outputs: ${meta.outputs.map((m) => m.name).join(', ')})`);
    }
  }

  const images = req.inputs.length === 1 && req.inputs[0]?.datatype === 'BYTES' ? (req.inputs[0].data as Buffer[]) : undefined;
  let raw: { outputs: Outputs; datatypes: Record<string, Datatype> };
  if (handle.entry.task === 'ocr') {
    if (images === undefined) {
      throw invalid(`model "${handle.name}" takes one BYTES input of encoded images; serve its detector and recognizer as tensor models for raw tensors`);
    }
    const results = await Promise.all(images.map((img) => handle.pipeline.predict(img, {}, ctx)));
    const data = results.map((r) => Buffer.from(JSON.stringify(r), 'utf8'));
    return { outputs: [{ name: 'result', datatype: 'BYTES', shape: [data.length], data }], outputParameters: [{}] };
  } else if (images !== undefined) {
    if (handle.entry.task === 'tensor') throw invalid(`model "${handle.name}" takes raw tensors, not BYTES`);
    raw = await runImages(handle, images, ctx);
  } else {
    if (req.inputs.some((t) => t.datatype === 'BYTES')) throw invalid('BYTES inputs are encoded images: send exactly one, alone');
    raw = await runTensors(handle, req.inputs, ctx);
  }

  const t = performance.now();
  const outputs: Tensor[] = [];
  const outputParameters: Parameters[] = [];
  const labels = await labelsOf(handle, ctx.baseDir);
  for (const o of requested) {
    const out = raw.outputs[o.name];
    if (out === undefined) throw new OcularError('INFERENCE_FAILED', `the model did not produce output ${o.name}`);
    const { classification, binary_data: _b, ...rest } = o.parameters;
    if (classification !== undefined && classification !== false) {
      const k = classification === true ? 1 : Number(classification);
      if (!Number.isInteger(k) || k < 1) throw invalid(`output "${o.name}": classification must be a positive integer`);
      outputs.push(classify(o.name, out.data, out.dims, k, labels));
    } else {
      outputs.push(outputTensor(o.name, out, raw.datatypes[o.name] ?? 'FP32'));
    }
    outputParameters.push(rest);
  }
  ctx.timings.postprocessMs += elapsedMs(t);
  return { outputs, outputParameters };
}

/** Triton's classification extension: per batch row, the top k of the last dimension as "value:index[:label]". */
export function classify(name: string, data: Float32Array, dims: number[], k: number, labels: readonly string[] | undefined): Tensor {
  const classes = dims.at(-1) ?? data.length;
  if (classes === 0) throw invalid(`output "${name}" is empty`);
  const rows = data.length / classes;
  const kk = Math.min(k, classes);
  const out: Buffer[] = [];
  for (let r = 0; r < rows; r++) {
    const row = data.subarray(r * classes, (r + 1) * classes);
    const idx = Array.from({ length: classes }, (_, i) => i).sort((a, b) => (row[b] as number) - (row[a] as number) || a - b);
    for (const i of idx.slice(0, kk)) {
      const label = labels?.[i];
      out.push(Buffer.from(`${row[i] as number}:${i}${label !== undefined ? `:${label}` : ''}`, 'utf8'));
    }
  }
  // Batched outputs keep their batch dim: [rows, k]; an output without one is [k].
  const shape = dims.length > 1 ? [rows, kk] : [kk];
  return { name, datatype: 'BYTES', shape, data: out };
}

function datatypesOf(metas: readonly TensorMeta[]): Record<string, Datatype> {
  return Object.fromEntries(metas.map((m) => [m.name, datatypeOfOrt(m.type) ?? 'FP32']));
}

async function runImages(handle: ModelHandle, images: Buffer[], ctx: InferContext): Promise<{ outputs: Outputs; datatypes: Record<string, Datatype> }> {
  const entry = handle.entry;
  const stage = handle.stages[0];
  if ((entry.task !== 'image-classification' && entry.task !== 'object-detection') || stage === undefined) {
    throw invalid(`model "${handle.name}" does not take images`);
  }
  if (images.length === 0) throw invalid('the BYTES input holds no image');
  const runs = await Promise.all(
    images.map(async (img) => {
      const t = performance.now();
      const prepared = await ctx.prepare(img, entry.input, ctx.limits);
      ctx.timings.preprocessMs += elapsedMs(t);
      throwIfAborted(ctx.signal);
      const run = await stage.run(prepared, ctx.signal);
      ctx.timings.queueMs = Math.max(ctx.timings.queueMs, run.queueMs);
      ctx.timings.inferenceMs = Math.max(ctx.timings.inferenceMs, run.inferenceMs);
      return run.outputs;
    }),
  );
  return { outputs: concatRows(runs), datatypes: datatypesOf(stage.pool.info.outputs) };
}

/** Per-image outputs (dim 0 = 1 each) back into one batch, in order; exact elements too where every part has them. */
function concatRows(parts: Outputs[]): Outputs {
  const first = parts[0] as Outputs;
  const out: Outputs = {};
  const concat = <T extends Float32Array | ExactData>(arrays: T[]): T => {
    const Ctor = (arrays[0] as T).constructor as new (n: number) => T;
    const data = new Ctor(arrays.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of arrays) {
      (data as Float32Array).set(a as Float32Array, at);
      at += a.length;
    }
    return data;
  };
  for (const [name, t] of Object.entries(first)) {
    const tensors = parts.map((p) => p[name] ?? { data: new Float32Array(0), dims: [] });
    const exacts = tensors.map((x) => x.exact?.data);
    const exact = t.exact !== undefined && exacts.every((e) => e !== undefined) ? { type: t.exact.type, data: concat(exacts) } : undefined;
    out[name] = { data: concat(tensors.map((x) => x.data)), dims: [parts.length, ...t.dims.slice(1)], ...(exact !== undefined && { exact }) };
  }
  return out;
}

async function runTensors(handle: ModelHandle, inputs: Tensor[], ctx: InferContext): Promise<{ outputs: Outputs; datatypes: Record<string, Datatype> }> {
  const stage = handle.stages[0];
  if (stage === undefined) throw new OcularError('MODEL_NOT_READY');
  const metas = stage.pool.info.inputs;
  const given = new Map(inputs.map((t) => [t.name, t]));
  for (const t of inputs) {
    if (!metas.some((m) => m.name === t.name)) {
      throw invalid(`model "${handle.name}" has no input "${t.name}" (inputs: ${metas.map((m) => m.name).join(', ')})`);
    }
  }
  const batchable = metas.every((m) => m.shape.length >= 1 && m.shape[0] === -1);
  let rows: number | undefined;
  const feeds: Record<string, TensorFeed> = {};
  for (const m of metas) {
    const t = given.get(m.name);
    if (t === undefined) throw invalid(`input "${m.name}" is missing`);
    if (t.shape.length !== m.shape.length || t.shape.some((d, i) => m.shape[i] !== -1 && m.shape[i] !== d)) {
      throw invalid(`input "${m.name}": shape [${t.shape.join(',')}] does not fit the model's [${m.shape.join(',')}] (-1: any)`);
    }
    if (batchable) {
      if (rows !== undefined && t.shape[0] !== rows) throw invalid('inputs disagree on the batch size (dim 0)');
      rows = t.shape[0];
    }
    const target = datatypeOfOrt(m.type);
    if (target === undefined || target === 'BYTES' || !FEEDABLE_TYPES.has(m.type)) {
      throw invalid(`input "${m.name}" is ${m.type}, which the runner cannot feed`);
    }
    const converted = convertTensor(t, target);
    feeds[m.name] = { data: converted.data as Exclude<NumericArray, Uint16Array | Uint32Array | Int16Array | BigUint64Array>, dims: t.shape, type: m.type };
  }
  if (rows === 0) throw invalid('the batch is empty (dim 0 is 0)');
  throwIfAborted(ctx.signal);
  const batcher = tensorBatcherOf(stage, handle.name, ctx.telemetry, ctx.logger);
  const run = await batcher.run({ feeds, rows: batchable ? (rows as number) : 0 }, ctx.signal);
  ctx.timings.queueMs += run.queueMs;
  ctx.timings.inferenceMs += run.inferenceMs;
  return { outputs: run.outputs, datatypes: datatypesOf(stage.pool.info.outputs) };
}
