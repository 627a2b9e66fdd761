import { OcularError, capText, describeValue } from '../errors.js';
import type { ExactData, OutputTensor } from './types.js';

/**
 * Tensors of the Open Inference Protocol (KServe v2) and Triton's binary tensor data extension: datatypes, JSON
 * `data` (row-major, flat or nested), binary chunks, and the conversions between them and onnxruntime's tensor
 * types. Framework-free and synchronous: it runs on the main thread for small bodies and in the JSON parser
 * worker (protocols/oip/parse-worker.ts) for large ones.
 *
 * Ownership: a decoded tensor owns its typed array (always a fresh, aligned copy, never a view into the request
 * body), so the body can be dropped and the array transferred between threads.
 */

export const DATATYPES = [
  'BOOL',
  'UINT8',
  'UINT16',
  'UINT32',
  'UINT64',
  'INT8',
  'INT16',
  'INT32',
  'INT64',
  'FP16',
  'FP32',
  'FP64',
  'BYTES',
] as const;
export type Datatype = (typeof DATATYPES)[number];

export type NumericArray = Float32Array | ExactData;

/** One tensor of a request or response. BYTES tensors hold one Buffer per element. */
export interface Tensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: NumericArray | Buffer[];
}

interface TypeInfo {
  bytes: number;
  ort: string;
  create(n: number): NumericArray;
}

const TYPES: Record<Exclude<Datatype, 'BYTES'>, TypeInfo> = {
  BOOL: { bytes: 1, ort: 'bool', create: (n) => new Uint8Array(n) },
  UINT8: { bytes: 1, ort: 'uint8', create: (n) => new Uint8Array(n) },
  UINT16: { bytes: 2, ort: 'uint16', create: (n) => new Uint16Array(n) },
  UINT32: { bytes: 4, ort: 'uint32', create: (n) => new Uint32Array(n) },
  UINT64: { bytes: 8, ort: 'uint64', create: (n) => new BigUint64Array(n) },
  INT8: { bytes: 1, ort: 'int8', create: (n) => new Int8Array(n) },
  INT16: { bytes: 2, ort: 'int16', create: (n) => new Int16Array(n) },
  INT32: { bytes: 4, ort: 'int32', create: (n) => new Int32Array(n) },
  INT64: { bytes: 8, ort: 'int64', create: (n) => new BigInt64Array(n) },
  // FP16 travels as its IEEE half bits.
  FP16: { bytes: 2, ort: 'float16', create: (n) => new Uint16Array(n) },
  FP32: { bytes: 4, ort: 'float32', create: (n) => new Float32Array(n) },
  FP64: { bytes: 8, ort: 'float64', create: (n) => new Float64Array(n) },
};

const ORT_TO_V2: Record<string, Datatype> = Object.fromEntries(
  Object.entries(TYPES).map(([v2, info]) => [info.ort, v2 as Datatype]),
);
ORT_TO_V2['string'] = 'BYTES';

/** The v2 datatype of an onnxruntime tensor type (`float32` -> `FP32`); undefined for types v2 cannot name. */
export function datatypeOfOrt(type: string): Datatype | undefined {
  return ORT_TO_V2[type];
}

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const invalid = (message: string): OcularError => new OcularError('INVALID_REQUEST', message);

/** Most elements of one tensor; far above any model here, low enough that a shape cannot ask for terabytes. */
export const MAX_ELEMENTS = 2 ** 28;

/** A tensor's name for an error message (names come from clients: cut short). */
export function nameText(name: string): string {
  return JSON.stringify(capText(name, 64));
}

/** A shape for an error message, `[1,3,224,224]`, cut short whatever the client sent. */
export function shapeText(shape: readonly unknown[]): string {
  return `[${capText(shape.slice(0, 17).map((d) => describeValue(d, 24)).join(','), 160)}]`;
}

export function checkShape(name: string, shape: unknown): number[] {
  if (!Array.isArray(shape) || shape.length > 16) throw invalid(`input ${nameText(name)}: shape must be an array of at most 16 dimensions`);
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || (d as number) < 0) throw invalid(`input ${nameText(name)}: shape ${shapeText(shape)} must hold non-negative integers`);
  }
  const dims = shape as number[];
  if (elementCount(dims) > MAX_ELEMENTS) throw invalid(`input ${nameText(name)}: shape ${shapeText(dims)} has more than ${MAX_ELEMENTS} elements`);
  return dims;
}

// ---- half floats ------------------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE 754 half bits -> number. */
export function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** number -> IEEE 754 half bits (round to nearest even). */
export function numberToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0] as number;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let frac = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (frac !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    frac |= 0x800000;
    const shift = 14 - e;
    let half = frac >> shift;
    const rem = frac & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (frac >> 13);
  const rem = frac & 0x1fff;
  // A carry out of the fraction rounds up into the exponent (and at most to infinity), as IEEE rounding does.
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/**
 * Stores `v` as element i of `out`, an array of `datatype`: != 0 for BOOL, half bits for FP16, as it is for the
 * other floats, truncated toward zero for integers (NaN and infinities as 0; then the typed array's wrap-around).
 * Both the JSON decoder (values already checked) and the conversion to a model's datatype write through it.
 */
function storeNumber(out: NumericArray, datatype: Exclude<Datatype, 'BYTES'>, i: number, v: number): void {
  switch (datatype) {
    case 'BOOL':
      (out as Uint8Array)[i] = v !== 0 ? 1 : 0;
      break;
    case 'FP16':
      (out as Uint16Array)[i] = numberToHalf(v);
      break;
    case 'FP32':
    case 'FP64':
      (out as Float64Array)[i] = v;
      break;
    case 'INT64':
    case 'UINT64':
      (out as BigInt64Array)[i] = BigInt(Number.isFinite(v) ? Math.trunc(v) : 0);
      break;
    default:
      (out as Int32Array)[i] = Number.isFinite(v) ? Math.trunc(v) : 0;
  }
}

// ---- JSON data --------------------------------------------------------------------------------------------

/** Calls `visit` on each element of row-major JSON data (flat or nested arrays), in order. */
function forEachJsonElement(name: string, data: unknown, visit: (v: unknown) => void): void {
  const walk = (v: unknown, depth: number): void => {
    if (Array.isArray(v)) {
      if (depth > 16) throw invalid(`input ${nameText(name)}: data is nested deeper than any shape`);
      for (const x of v) walk(x, depth + 1);
    } else visit(v);
  };
  walk(data, 0);
}

/** Flattens row-major JSON data (flat or nested arrays) into `out`, checking each element's JSON type. */
function fillFromJson(name: string, datatype: Exclude<Datatype, 'BYTES'>, data: unknown, out: NumericArray): void {
  let i = 0;
  const n = out.length;
  // describeValue, not JSON.stringify: an element may be an object nested deeper than the stack (issue 18).
  const bad = (v: unknown): OcularError => invalid(`input ${nameText(name)}: element ${i} (${describeValue(v, 32)}) is not a valid ${datatype} value`);
  /** The JSON element as the number to store, once its JSON type (and an integer's range) fits the datatype. */
  const checked = (v: unknown): number => {
    switch (datatype) {
      case 'BOOL':
        if (typeof v !== 'boolean') throw bad(v);
        return v ? 1 : 0;
      case 'INT64':
      case 'UINT64':
        if (typeof v !== 'number' || !Number.isInteger(v)) throw bad(v);
        if (datatype === 'UINT64' && v < 0) throw bad(v);
        return v;
      case 'FP16':
      case 'FP32':
      case 'FP64':
        if (typeof v !== 'number') throw bad(v);
        return v;
      default: {
        if (typeof v !== 'number' || !Number.isInteger(v)) throw bad(v);
        const info = INT_RANGES[datatype];
        if (v < info[0] || v > info[1]) throw bad(v);
        return v;
      }
    }
  };
  const put = (v: unknown): void => {
    if (i >= n) throw invalid(`input ${nameText(name)}: data has more elements than its shape holds (${n})`);
    storeNumber(out, datatype, i, checked(v));
    i++;
  };
  forEachJsonElement(name, data, put);
  if (i !== n) throw invalid(`input ${nameText(name)}: data has ${i} elements, its shape holds ${n}`);
}

const INT_RANGES: Record<'UINT8' | 'UINT16' | 'UINT32' | 'INT8' | 'INT16' | 'INT32', [number, number]> = {
  UINT8: [0, 255],
  UINT16: [0, 65535],
  UINT32: [0, 4294967295],
  INT8: [-128, 127],
  INT16: [-32768, 32767],
  INT32: [-2147483648, 2147483647],
};

function bytesFromJson(name: string, data: unknown, n: number): Buffer[] {
  const out: Buffer[] = [];
  forEachJsonElement(name, data, (v) => {
    if (typeof v !== 'string') throw invalid(`input ${nameText(name)}: BYTES elements must be strings`);
    // No Buffer past the shape's count: a request's elements are bounded by its (checked) shape, not its body.
    if (out.length >= n) throw invalid(`input ${nameText(name)}: data has more elements than its shape holds (${n})`);
    out.push(Buffer.from(v, 'utf8'));
  });
  if (out.length !== n) throw invalid(`input ${nameText(name)}: data has ${out.length} elements, its shape holds ${n}`);
  return out;
}

/** A tensor from a request input carrying JSON `data`. */
export function tensorFromJson(name: string, datatype: Datatype, shape: number[], data: unknown): Tensor {
  const n = elementCount(shape);
  if (datatype === 'BYTES') return { name, datatype, shape, data: bytesFromJson(name, data, n) };
  const out = TYPES[datatype].create(n);
  fillFromJson(name, datatype, data, out);
  return { name, datatype, shape, data: out };
}

// ---- binary data ------------------------------------------------------------------------------------------

/** A tensor from a binary chunk (Triton binary extension). BYTES elements are 4-byte little-endian length + bytes. */
export function tensorFromBinary(name: string, datatype: Datatype, shape: number[], chunk: Uint8Array): Tensor {
  const n = elementCount(shape);
  if (datatype === 'BYTES') {
    const out: Buffer[] = [];
    const view = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let at = 0;
    while (at < view.length) {
      if (at + 4 > view.length) throw invalid(`input ${nameText(name)}: truncated BYTES element length at byte ${at}`);
      const len = view.readUInt32LE(at);
      at += 4;
      if (at + len > view.length) throw invalid(`input ${nameText(name)}: BYTES element of ${len} bytes runs past its chunk`);
      // No Buffer past the shape's count: a million empty elements in a chunk make at most n Buffers, then a 400.
      if (out.length >= n) throw invalid(`input ${nameText(name)}: binary data holds more elements than its shape holds (${n})`);
      out.push(Buffer.from(view.subarray(at, at + len)));
      at += len;
    }
    if (out.length !== n) throw invalid(`input ${nameText(name)}: binary data holds ${out.length} elements, its shape holds ${n}`);
    return { name, datatype, shape, data: out };
  }
  const info = TYPES[datatype];
  if (chunk.byteLength !== n * info.bytes) {
    throw invalid(`input ${nameText(name)}: binary_data_size is ${chunk.byteLength} bytes, shape ${shapeText(shape)} of ${datatype} needs ${n * info.bytes}`);
  }
  // Copied into a fresh, aligned buffer (the chunk sits at any offset in the body).
  const out = info.create(n);
  new Uint8Array(out.buffer).set(chunk);
  if (datatype === 'BOOL') {
    for (let i = 0; i < n; i++) if ((out[i] as number) > 1) throw invalid(`input ${nameText(name)}: BOOL bytes must be 0 or 1`);
  }
  return { name, datatype, shape, data: out };
}

/** The bytes of a tensor as Triton's binary extension lays them out. */
export function tensorToBinary(t: Tensor): Buffer {
  if (Array.isArray(t.data)) {
    const parts: Buffer[] = [];
    for (const el of t.data) {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(el.length, 0);
      parts.push(len, el);
    }
    return Buffer.concat(parts);
  }
  const d = t.data as NumericArray;
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
}

/**
 * The JSON text of a tensor's flat `data` array. 64-bit integers are written as JSON numbers with every digit, as
 * Triton does (the protocol has no other JSON form for INT64/UINT64), including beyond 2^53, where a client's
 * double-based JSON parser would round them: such clients should ask for binary_data or parse big integers.
 */
export function tensorToJsonText(t: Tensor): string {
  const d = t.data;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return `[${Array.from(d, (v) => v.toString()).join(',')}]`;
  return JSON.stringify(tensorToJsonData(t));
}

/** JSON `data` of a tensor, flat (the protocol allows flat or nested; flat is what clients expect back). */
export function tensorToJsonData(t: Tensor): (number | boolean | string)[] {
  if (Array.isArray(t.data)) return t.data.map((b) => b.toString('utf8'));
  const d = t.data;
  if (t.datatype === 'BOOL') return Array.from(d as Uint8Array, (v) => v !== 0);
  if (t.datatype === 'FP16') return Array.from(d as Uint16Array, halfToNumber);
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return Array.from(d, (v) => Number(v));
  return Array.from(d as Float32Array);
}

// ---- conversion -------------------------------------------------------------------------------------------

/** Element i of a numeric tensor as a JS number (FP16 bits decoded, BOOL 0/1, 64-bit integers rounded). */
function numberAt(datatype: Datatype, d: NumericArray, i: number): number {
  const v = d[i] as number | bigint;
  if (typeof v === 'bigint') return Number(v);
  return datatype === 'FP16' ? halfToNumber(v) : v;
}

/**
 * Converts a numeric tensor to another numeric datatype (the model's), elementwise: truncation toward zero (then
 * the typed array's own wrap-around) for integer targets, IEEE rounding for floats, != 0 for BOOL. Returns the
 * tensor itself when the datatype already matches. With `exact`, an element the target cannot hold as it is
 * (2^24 + 1 in FP32, 1.5 or 300 in UINT8, 2 in BOOL, an INT64 past 2^53) is a 400 naming it, not a rounding.
 */
export function convertTensor(t: Tensor, to: Exclude<Datatype, 'BYTES'>, opts: { exact?: boolean } = {}): Tensor {
  if (t.datatype === to) return t;
  if (Array.isArray(t.data)) throw invalid(`input ${nameText(t.name)}: BYTES cannot be converted to ${to}`);
  const src = t.data;
  const n = src.length;
  const out = TYPES[to].create(n);
  for (let i = 0; i < n; i++) {
    const v = numberAt(t.datatype, src, i);
    storeNumber(out, to, i, v);
    if (opts.exact === true && !sameValue(src[i] as number | bigint, v, numberAt(to, out, i))) {
      throw invalid(`input ${nameText(t.name)}: element ${i} (${String(src[i])}) is not exactly representable in ${to}`);
    }
  }
  return { name: t.name, datatype: to, shape: t.shape, data: out };
}

/** Whether a converted element reads back as the original: `raw` as stored (bigint for 64-bit integers). */
function sameValue(raw: number | bigint, v: number, back: number): boolean {
  if (typeof raw === 'bigint') return Number.isSafeInteger(back) && BigInt(back) === raw;
  return Object.is(v, back) || (v === 0 && back === 0) || (Number.isNaN(v) && Number.isNaN(back));
}

/**
 * A model output as a tensor of the model's declared datatype: its exact elements when the runner sent them (any
 * output not float32) in that type, else its float32 elements converted.
 */
export function outputTensor(name: string, out: OutputTensor, datatype: Datatype): Tensor {
  if (out.exact !== undefined && datatypeOfOrt(out.exact.type) === datatype) {
    return { name, datatype, shape: out.dims, data: out.exact.data };
  }
  const t: Tensor = { name, datatype: 'FP32', shape: out.dims, data: out.data };
  if (datatype === 'FP32' || datatype === 'BYTES') return t;
  return convertTensor(t, datatype);
}
