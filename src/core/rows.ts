import { OcularError } from '../errors.js';
import type { ExactData, OutputTensor, Outputs } from './types.js';

/**
 * Batch outputs split into each request's rows, and rows joined back into one batch. A batch's outputs are one
 * transferred buffer (see SessionPool); the pieces handed out are views of it, never copies, and nothing here
 * writes to them.
 */

/** Splits batch outputs (dim 0 = n) into n per-item views; no copying. */
export function splitBatch(outputs: Outputs, n: number): Outputs[] {
  const out: Outputs[] = Array.from({ length: n }, () => ({}));
  for (const [name, tensor] of Object.entries(outputs)) {
    if (tensor.dims[0] !== n || tensor.data.length % n !== 0) {
      throw new OcularError('INFERENCE_FAILED', `output ${name} has dims [${tensor.dims.join(',')}], expected batch ${n}`);
    }
    const per = tensor.data.length / n;
    const dims = [1, ...tensor.dims.slice(1)];
    for (let i = 0; i < n; i++) (out[i] as Outputs)[name] = sliceRows(tensor, i * per, (i + 1) * per, dims);
  }
  return out;
}

/** Splits batch outputs (dim 0 = sum of rows) into per-request views of `rows[i]` rows each. */
export function splitRows(outputs: Outputs, rows: number[]): Outputs[] {
  const total = rows.reduce((a, b) => a + b, 0);
  const out: Outputs[] = rows.map(() => ({}));
  for (const [name, tensor] of Object.entries(outputs)) {
    if (rows.length === 1) {
      (out[0] as Outputs)[name] = tensor;
      continue;
    }
    if (tensor.dims[0] !== total || total === 0 || tensor.data.length % total !== 0) {
      throw new OcularError('INFERENCE_FAILED', `output ${name} has dims [${tensor.dims.join(',')}], expected ${total} rows`);
    }
    const per = tensor.data.length / total;
    let at = 0;
    rows.forEach((r, i) => {
      (out[i] as Outputs)[name] = sliceRows(tensor, at * per, (at + r) * per, [r, ...tensor.dims.slice(1)]);
      at += r;
    });
  }
  return out;
}

/** Elements [from, to) of an output (float32 and exact alike) as views, with the given dims; no copying. */
export function sliceRows(tensor: OutputTensor, from: number, to: number, dims: number[]): OutputTensor {
  const exact = tensor.exact;
  return {
    data: tensor.data.subarray(from, to),
    dims,
    ...(exact !== undefined && { exact: { type: exact.type, data: exact.data.subarray(from, to) } }),
  };
}

/**
 * Per-item outputs (dim 0 = 1 each) as one batch, in order: the item's own outputs for one item; a view where the
 * items are adjacent rows of one buffer (items of one batch, queued in order); else a copy. Exact elements are
 * kept where every item has them.
 */
export function joinRows(parts: Outputs[]): Outputs {
  const first = parts[0];
  if (first === undefined) return {};
  if (parts.length === 1) return first;
  const out: Outputs = {};
  for (const [name, t] of Object.entries(first)) {
    const tensors = parts.map((p) => p[name] ?? { data: new Float32Array(0), dims: [] });
    const exacts = tensors.map((x) => x.exact?.data);
    const exact = t.exact !== undefined && exacts.every((e) => e !== undefined) ? { type: t.exact.type, data: join(exacts) } : undefined;
    out[name] = { data: join(tensors.map((x) => x.data)), dims: [parts.length, ...t.dims.slice(1)], ...(exact !== undefined && { exact }) };
  }
  return out;
}

type Rows = Float32Array | ExactData;

function join<T extends Rows>(arrays: T[]): T {
  return adjacentView(arrays) ?? copy(arrays);
}

/** One view over arrays that lie end to end, in order, in one buffer; undefined where they do not. */
function adjacentView<T extends Rows>(arrays: T[]): T | undefined {
  const first = arrays[0] as T;
  let end = first.byteOffset + first.byteLength;
  for (const a of arrays.slice(1)) {
    if (a.buffer !== first.buffer || a.constructor !== first.constructor || a.byteOffset !== end) return undefined;
    end += a.byteLength;
  }
  const View = first.constructor as new (buffer: ArrayBufferLike, byteOffset: number, length: number) => T;
  return new View(first.buffer, first.byteOffset, (end - first.byteOffset) / first.BYTES_PER_ELEMENT);
}

function copy<T extends Rows>(arrays: T[]): T {
  const Ctor = (arrays[0] as T).constructor as new (n: number) => T;
  const data = new Ctor(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    (data as Float32Array).set(a as Float32Array, at);
    at += a.length;
  }
  return data;
}
