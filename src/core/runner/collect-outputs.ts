import * as ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-common';
import type { ExactData, Outputs } from '../types.js';
import type { FeedData } from './worker-protocol.js';
import { fromHalves } from './image-feed.js';

/** A run's session outputs, in the worker thread, as they are sent to the pool. */

function float32Of(tensor: Tensor): Float32Array {
  const data = tensor.data;
  if (data instanceof Float32Array) return data;
  // float16 arrives as its IEEE half bits (Node 20 has no Float16Array): decoded, not read as integers.
  if (tensor.type === 'float16' && data instanceof Uint16Array) return fromHalves(data);
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
    const out = new Float32Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = Number(data[i]);
    return out;
  }
  if (Array.isArray(data)) throw new Error(`output of type ${tensor.type} is not numeric`);
  return Float32Array.from(data as ArrayLike<number>);
}

/**
 * Turns session outputs into float32 tensors (what the image tasks read), plus, for an output of any other type,
 * its native array as `exact` (what v2 answers with), and the buffers to transfer. onnxruntime-node hands each
 * output in an ArrayBuffer of its own, which is transferred (zero-copy); a view that does not span its whole
 * buffer, or a buffer already listed, is copied first, since transferring it would move bytes that are not ours
 * to move. A non-float32 output thus costs one float32 copy besides its own bytes.
 */
export function collectOutputs(results: InferenceSession.ReturnType): { outputs: Outputs; transfer: ArrayBuffer[] } {
  const outputs: Outputs = {};
  const transfer: ArrayBuffer[] = [];
  const own = <T extends Float32Array | ExactData>(data: T): T => {
    const buffer = data.buffer;
    const whole = data.byteOffset === 0 && data.byteLength === buffer.byteLength;
    const owned = !(buffer instanceof ArrayBuffer) || !whole || transfer.includes(buffer) ? (data.slice() as T) : data;
    transfer.push(owned.buffer as ArrayBuffer);
    return owned;
  };
  for (const [name, value] of Object.entries(results)) {
    const tensor = value as Tensor;
    const native = tensor.type !== 'float32' && ArrayBuffer.isView(tensor.data) ? (tensor.data as ExactData) : undefined;
    const data = own(float32Of(tensor));
    const exact = native !== undefined ? { type: tensor.type, data: own(native) } : undefined;
    outputs[name] = { data, dims: [...tensor.dims], ...(exact !== undefined && { exact }) };
  }
  return { outputs, transfer };
}

/** The first `n` rows of every output of a run on `rows` rows (views: collectOutputs copies only those). */
export function firstRows(results: InferenceSession.ReturnType, n: number, rows: number): InferenceSession.ReturnType {
  const out: Record<string, Tensor> = {};
  for (const [name, value] of Object.entries(results)) {
    const tensor = value as Tensor;
    if (tensor.dims[0] !== rows || !ArrayBuffer.isView(tensor.data)) {
      throw new Error(`output ${name} has dims [${tensor.dims.join(',')}]: cannot drop the padding rows of a batch of ${rows}`);
    }
    const per = tensor.size / rows;
    const data = (tensor.data as FeedData).subarray(0, n * per) as FeedData;
    out[name] = new ort.Tensor(tensor.type as Tensor.Type, data, [n, ...tensor.dims.slice(1)]);
  }
  return out;
}
