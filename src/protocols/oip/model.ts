import { datatypeMismatch, fitsShape, type ParsedInferRequest, type Parameters, type RequestBounds } from './request.js';
import type { ModelHandle } from '../../core/model-handle.js';
import { joinRows } from '../../core/rows.js';
import { FEEDABLE_TYPES, type FeedTensor } from '../../core/runner/feeds.js';
import {
  convertTensor,
  datatypeOfOrt,
  outputTensor,
  type Datatype,
  type NumericArray,
  type Tensor,
} from '../../core/tensor-codec.js';
import type { Timings } from '../../core/telemetry.js';
import { recordRun, recordStage } from '../../core/tracing.js';
import type { Outputs, TensorMeta } from '../../core/types.js';
import { OcularError, modelNotFound } from '../../errors.js';
import { parseParams, prepareAndRunAll, throwIfAborted } from '../../tasks/pipeline.js';
import type { DecodeLimits, ImagePreparer } from '../../core/preprocess/image.js';

/**
 * The Open Inference Protocol view of a served model: its metadata (inputs and outputs with v2 datatypes and -1
 * for dynamic dims) and inference on it.
 *
 * - Every model but `ocr` takes raw tensors: they are checked against the model's inputs (names, rank, fixed
 *   dims), converted to the model's element type, and run through the stage's tensor batcher.
 * - Image models also take a BYTES input of encoded images (JPEG, PNG, WebP...), one per element, prepared and
 *   run as /v1 predict runs them (prepareAndRunAll); the answer is the model's raw outputs for the batch of
 *   images. `ocr` and `semantic-segmentation` take only images, and answer one JSON result per image (the /v1
 *   answer: for segmentation, COCO RLE masks) in a BYTES output `result`; a segmentation request's parameters
 *   `classes` and `min_area` mean what the /v1 query's do.
 * - Datatypes must match the model's inputs exactly, as Triton requires; an input (or the whole request) with
 *   `parameters.convert_datatype: true` is converted instead, and only when every element converts exactly.
 * - An output requested with `parameters.classification: k` is answered in Triton's classification extension
 *   format: BYTES strings "value:index[:label]", the top k of each batch row's elements (all of its non-batch
 *   dimensions, flattened; the whole output when the model has no batch dimension).
 * - The image input of image models is described in the metadata (`parameters.encoded_images` and
 *   `parameters.optional`) and in the configuration (`optional: true`), so metadata-driven clients and
 *   perf_analyzer find it and know to send it alone, in place of the tensor inputs.
 */

export const PLATFORM = 'onnxruntime_onnx';

/** The protocol's extensions Ocular serves (server metadata, REST and gRPC). */
export const EXTENSIONS = ['binary_tensor_data', 'classification', 'model_repository'];

/** The serving version of a model, checked against the version the request names, when it names one (404). */
export function lookupModel(models: { get(name: string): ModelHandle | undefined; list(): readonly { name: string }[] }, name: string, version: string | undefined): ModelHandle {
  const handle = models.get(name);
  if (handle === undefined) throw modelNotFound(name, models.list().map((m) => m.name));
  if (version !== undefined && version !== handle.version) {
    throw new OcularError('MODEL_NOT_FOUND', `model "${name.slice(0, 64)}" has no version "${version.slice(0, 64)}" (serving ${handle.version})`);
  }
  return handle;
}

export interface V2TensorMeta {
  name: string;
  datatype: Datatype;
  shape: number[];
  parameters?: Record<string, string | number | boolean>;
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
  /** Counts `count` more images of this request against the model's admission bound, or throws QUEUE_FULL. */
  admit(count: number): void;
  /** Largest answer (OCULAR_MAX_RESPONSE_BYTES): what a request's JSON results may take, shared by its images. */
  maxResponseBytes: number;
}

export interface InferResult {
  outputs: Tensor[];
  /** Per output, its response parameters (the request's, minus binary_data and classification). */
  outputParameters: Parameters[];
}

const RESULT_IO: V2TensorMeta = { name: 'result', datatype: 'BYTES', shape: [-1] };

/** Tasks whose models take encoded images as well as tensors (OCR takes only images). */
const IMAGE_TASKS = new Set(['image-classification', 'object-detection']);

/**
 * The name of a model's BYTES input of encoded images: `image`, or `image_bytes` when the model has a tensor
 * input of its own named `image`; undefined for models that take no images (the `tensor` task).
 */
export function imageInputName(handle: ModelHandle): string | undefined {
  if (answersJson(handle)) return 'image';
  if (!IMAGE_TASKS.has(handle.entry.task)) return undefined;
  return handle.stages[0]?.pool.info.inputs.some((m) => m.name === 'image') === true ? 'image_bytes' : 'image';
}

/** The image input's metadata: optional beside the tensor inputs (it replaces them), required for OCR. */
function imageMeta(name: string, optional: boolean): V2TensorMeta {
  return { name, datatype: 'BYTES', shape: [-1], parameters: { encoded_images: true, optional } };
}

function v2Meta(m: TensorMeta): V2TensorMeta {
  const datatype = datatypeOfOrt(m.type);
  if (datatype === undefined) throw new OcularError('INTERNAL', `tensor ${m.name} has type ${m.type}, which v2 cannot name`);
  return { name: m.name, datatype, shape: m.shape };
}

export function metadataOf(handle: ModelHandle): V2Metadata {
  const base = { name: handle.name, versions: [handle.version], platform: PLATFORM };
  const stage = handle.stages[0];
  const image = imageInputName(handle);
  if (answersJson(handle) || stage === undefined) {
    return { ...base, inputs: answersJson(handle) ? [imageMeta('image', false)] : [], outputs: answersJson(handle) ? [RESULT_IO] : [] };
  }
  const inputs = stage.pool.info.inputs.map(v2Meta);
  return { ...base, inputs: image !== undefined ? [...inputs, imageMeta(image, true)] : inputs, outputs: stage.pool.info.outputs.map(v2Meta) };
}

/** Triton's name of a datatype in a model configuration (`FP32` -> `TYPE_FP32`; BYTES is `TYPE_STRING`). */
export function configDataType(datatype: Datatype): string {
  return datatype === 'BYTES' ? 'TYPE_STRING' : `TYPE_${datatype}`;
}

export interface ConfigTensor {
  name: string;
  data_type: string;
  dims: number[];
  reshape?: { shape: number[] };
  optional?: boolean;
}

/** The fields of Triton's model configuration (model_config.proto, as its JSON) that Ocular knows for a model. */
export interface V2ModelConfig {
  name: string;
  platform: string;
  backend: string;
  max_batch_size: number;
  input: ConfigTensor[];
  output: ConfigTensor[];
  dynamic_batching?: {
    max_queue_delay_microseconds: number;
    preserve_ordering: boolean;
    default_queue_policy: { timeout_action: 'REJECT'; default_timeout_microseconds: number; allow_timeout_override: boolean; max_queue_size: number };
  };
  instance_group: { name: string; kind: 'KIND_CPU' | 'KIND_GPU'; count: number }[];
  model_transaction_policy: { decoupled: boolean };
  response_cache: { enable: boolean };
}

/**
 * The model's configuration as Triton's `GET /v2/models/{name}/config` gives it: max_batch_size is the
 * manifest's maxBatchSize when every input's dim 0 is dynamic (the batch), else 0; dims leave the batch dimension
 * out when max_batch_size > 0 (a per-row scalar is `dims: [1]` reshaped to `[]`, as Triton writes it); the
 * batcher's settings as dynamic_batching. Consistent with metadataOf, whose names, datatypes and shapes (batch
 * dimension first) perf_analyzer reads beside it.
 */
export function configOf(handle: ModelHandle): V2ModelConfig {
  const meta = metadataOf(handle);
  const stage = handle.stages[0];
  const bounds = boundsOf(handle);
  const maxBatchSize = bounds.batched || answersJson(handle) ? bounds.maxBatchSize : 0;
  const tensor = (m: V2TensorMeta): ConfigTensor => {
    const dims = maxBatchSize > 0 ? m.shape.slice(1) : m.shape;
    return {
      name: m.name,
      data_type: configDataType(m.datatype),
      ...(dims.length > 0 ? { dims } : { dims: [1], reshape: { shape: [] } }),
      ...(m.parameters?.['optional'] === true ? { optional: true } : {}),
    };
  };
  const provider = stage?.pool.info.provider ?? 'cpu';
  return {
    name: handle.name,
    platform: PLATFORM,
    backend: 'onnxruntime',
    max_batch_size: maxBatchSize,
    input: meta.inputs.map(tensor),
    output: meta.outputs.map(tensor),
    ...(stage !== undefined && maxBatchSize > 0
      ? {
          dynamic_batching: {
            max_queue_delay_microseconds: Math.round(stage.batching.maxQueueDelayMs * 1000),
            preserve_ordering: true,
            default_queue_policy: {
              timeout_action: 'REJECT' as const,
              default_timeout_microseconds: Number.isFinite(stage.batching.timeoutMs) ? Math.round(stage.batching.timeoutMs * 1000) : 0,
              allow_timeout_override: false,
              max_queue_size: stage.batching.maxQueueSize,
            },
          },
        }
      : {}),
    instance_group: stage !== undefined ? [{ name: handle.name, kind: provider === 'cpu' ? 'KIND_CPU' : 'KIND_GPU', count: stage.pool.instances }] : [],
    model_transaction_policy: { decoupled: false },
    response_cache: { enable: false },
  };
}

/** Tasks whose v2 answer is their /v1 JSON per image (images in, `result` out), not the model's raw outputs. */
function answersJson(handle: ModelHandle): boolean {
  return handle.entry.task === 'ocr' || handle.entry.task === 'semantic-segmentation';
}

const invalid = (message: string): OcularError => new OcularError('INVALID_REQUEST', message);


/**
 * What a request to this model may hold, checked against its JSON header before any element is made
 * (parseInferRequest): at most maxBatchSize images, tensor inputs of the model's names and shapes, at most
 * maxBatchSize rows where dim 0 is the batch.
 */
export function boundsOf(handle: ModelHandle): RequestBounds {
  const stage = handle.stages[0];
  const maxBatchSize = stage?.maxBatchSize ?? 1;
  const image = imageInputName(handle);
  const imageInput = image !== undefined ? { imageInput: image } : {};
  if (answersJson(handle) || stage?.tensors === undefined) return { model: handle.name, maxBatchSize, batched: false, ...imageInput };
  const inputs = stage.pool.info.inputs.map((m) => ({ name: m.name, shape: m.shape, datatype: datatypeOfOrt(m.type) ?? 'FP32' }));
  return { model: handle.name, maxBatchSize, inputs, batched: inputs.every((m) => m.shape.length >= 1 && m.shape[0] === -1), ...imageInput };
}

/** Whether the client asked for its inputs' datatypes to be converted (per input, or for the whole request). */
export function conversionAsked(requestParameters: Parameters | undefined, inputParameters: Parameters | undefined): boolean {
  return inputParameters?.['convert_datatype'] === true || requestParameters?.['convert_datatype'] === true;
}

export async function infer(handle: ModelHandle & { pipeline: NonNullable<ModelHandle['pipeline']> }, req: ParsedInferRequest, ctx: InferContext): Promise<InferResult> {
  const meta = metadataOf(handle);
  const requested = req.outputs ?? meta.outputs.map((o) => ({ name: o.name, parameters: {} as Parameters }));
  for (const o of requested) {
    if (!meta.outputs.some((m) => m.name === o.name)) {
      throw invalid(`model "${handle.name}" has no output "${o.name}" (outputs: ${meta.outputs.map((m) => m.name).join(', ')})`);
    }
  }

  const imageName = imageInputName(handle);
  for (const t of req.inputs) {
    if (t.datatype === 'BYTES' && t.name !== imageName) {
      throw invalid(
        imageName === undefined
          ? `model "${handle.name}" takes raw tensors, not BYTES`
          : `input "${t.name}" is BYTES: encoded images go in input "${imageName}", alone`,
      );
    }
  }
  const images = req.inputs.length === 1 && req.inputs[0]?.datatype === 'BYTES' ? (req.inputs[0].data as Buffer[]) : undefined;
  // Each image is admitted like a /v1 file: the lifecycle admitted the request as one, the rest count now.
  if (images !== undefined && images.length > 1) ctx.admit(images.length - 1);
  let raw: { outputs: Outputs; datatypes: Record<string, Datatype> };
  if (answersJson(handle)) {
    if (images === undefined) {
      throw invalid(
        handle.entry.task === 'ocr'
          ? `model "${handle.name}" takes one BYTES input of encoded images; serve its detector and recognizer as tensor models for raw tensors`
          : `model "${handle.name}" takes one BYTES input of encoded images; serve the model as a tensor model for raw tensors`,
      );
    }
    const params = handle.entry.task === 'semantic-segmentation' ? segmentationParams(handle, req.parameters) : {};
    const answerBytes = { left: ctx.maxResponseBytes };
    const results = await Promise.all(images.map((img) => handle.pipeline.predict(img, params, { ...ctx, answerBytes })));
    const data = results.map((r) => Buffer.from(JSON.stringify(r), 'utf8'));
    return { outputs: [{ name: 'result', datatype: 'BYTES', shape: [data.length], data }], outputParameters: [{}] };
  } else if (images !== undefined) {
    if (handle.entry.task === 'tensor') throw invalid(`model "${handle.name}" takes raw tensors, not BYTES`);
    raw = await runImages(handle, images, ctx);
  } else {
    if (req.inputs.some((t) => t.datatype === 'BYTES')) throw invalid('BYTES inputs are encoded images: send exactly one, alone');
    raw = await runTensors(handle, req, ctx);
  }

  const t = performance.now();
  const outputs: Tensor[] = [];
  const outputParameters: Parameters[] = [];
  const labels = handle.pipeline.labels;
  // Dim 0 of every output is the batch when the model batches (its inputs' dim 0 is dynamic) or took images.
  const batchedOutputs = images !== undefined || boundsOf(handle).batched;
  for (const o of requested) {
    const out = raw.outputs[o.name];
    if (out === undefined) throw new OcularError('INFERENCE_FAILED', `the model did not produce output ${o.name}`);
    const { classification, binary_data: _b, ...rest } = o.parameters;
    if (classification !== undefined && classification !== false) {
      const k = classification === true ? 1 : Number(classification);
      if (!Number.isInteger(k) || k < 1) throw invalid(`output "${o.name}": classification must be a positive integer`);
      outputs.push(classify(o.name, out.data, out.dims, k, labels, batchedOutputs));
    } else {
      outputs.push(outputTensor(o.name, out, raw.datatypes[o.name] ?? 'FP32'));
    }
    outputParameters.push(rest);
  }
  recordStage(ctx.timings, 'postprocess', t);
  return { outputs, outputParameters };
}

/** A segmentation request's `classes` and `min_area` parameters, as the /v1 query gives them (JSON only: no format). */
function segmentationParams(handle: ModelHandle & { pipeline: NonNullable<ModelHandle['pipeline']> }, parameters: Parameters): unknown {
  const picked: Record<string, string> = {};
  for (const key of ['classes', 'min_area']) {
    const v = parameters[key];
    if (v === undefined) continue;
    if (typeof v !== 'string' && typeof v !== 'number') throw new OcularError('INVALID_PARAMETER', `parameters.${key} must be a string or a number`);
    picked[key] = String(v);
  }
  return parseParams(handle.pipeline.paramsSchema, picked);
}

/**
 * Triton's classification extension: per batch row, the top k of the row's elements as "value:index[:label]", the
 * index counted over all of the row's non-batch dimensions flattened (an output [1, 4420, 2] gives k strings per
 * row, indices up to 8839, as Triton does). Without a batch dimension the whole output is one row.
 */
export function classify(name: string, data: Float32Array, dims: number[], k: number, labels: readonly string[] | undefined, batched: boolean): Tensor {
  const rows = batched && dims.length > 1 ? (dims[0] as number) : 1;
  if (rows === 0 || data.length === 0) throw invalid(`output "${name}" is empty`);
  const classes = data.length / rows;
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
  const shape = batched && dims.length > 1 ? [rows, kk] : [kk];
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
  const runs = await prepareAndRunAll(stage, images, entry.input, ctx, ctx);
  return { outputs: joinRows(runs.map((r) => r.outputs)), datatypes: datatypesOf(stage.pool.info.outputs) };
}

async function runTensors(handle: ModelHandle, req: ParsedInferRequest, ctx: InferContext): Promise<{ outputs: Outputs; datatypes: Record<string, Datatype> }> {
  const inputs = req.inputs;
  const stage = handle.stages[0];
  if (stage === undefined) throw new OcularError('MODEL_NOT_READY');
  const batcher = stage.tensors;
  if (batcher === undefined) throw invalid(`model "${handle.name}" does not take raw tensors`);
  const metas = stage.pool.info.inputs;
  const given = new Map(inputs.map((t) => [t.name, t]));
  for (const t of inputs) {
    if (!metas.some((m) => m.name === t.name)) {
      throw invalid(`model "${handle.name}" has no input "${t.name}" (inputs: ${metas.map((m) => m.name).join(', ')})`);
    }
  }
  const batchable = metas.every((m) => m.shape.length >= 1 && m.shape[0] === -1);
  let rows: number | undefined;
  const feeds: Record<string, FeedTensor> = {};
  for (const m of metas) {
    const t = given.get(m.name);
    if (t === undefined) throw invalid(`input "${m.name}" is missing`);
    if (!fitsShape(t.shape, m.shape)) {
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
    let converted = t;
    if (t.datatype !== target) {
      if (!conversionAsked(req.parameters, req.inputParameters[inputs.indexOf(t)])) throw datatypeMismatch(handle.name, m.name, t.datatype, target);
      converted = convertTensor(t, target, { exact: true });
    }
    feeds[m.name] = { data: converted.data as Exclude<NumericArray, Uint16Array | Uint32Array | Int16Array | BigUint64Array>, dims: t.shape, type: m.type };
  }
  if (rows === 0) throw invalid('the batch is empty (dim 0 is 0)');
  throwIfAborted(ctx.signal);
  const run = await batcher.run({ feeds, rows: batchable ? (rows as number) : 0 }, ctx.signal);
  recordRun(ctx.timings, run);
  ctx.timings.queueMs += run.queueMs;
  ctx.timings.inferenceMs += run.inferenceMs;
  return { outputs: run.outputs, datatypes: datatypesOf(stage.pool.info.outputs) };
}
