/**
 * What the runner feeds to onnxruntime besides images: raw tensors (v2 requests, a tensor model's warm-up) and the
 * zero tensors of warm-up and profiled runs. The worker checks every feed's type against FEEDABLE_TYPES; the
 * tensor task refuses, at load, a model with an input of another type.
 */

/** Input element types the runner can feed, as onnxruntime names them. */
export const FEEDABLE_TYPES: ReadonlySet<string> = new Set(['float32', 'float16', 'float64', 'int32', 'int64', 'uint8', 'int8', 'bool']);

/** The typed arrays of FEEDABLE_TYPES (bool travels as one byte per element, float16 as its IEEE half bits). */
export type FeedData = Float32Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array | Int8Array | Float64Array;

export interface FeedTensor {
  data: FeedData;
  dims: number[];
  type: string;
}

/** `n` zeros in the array onnxruntime takes for `type`, one of FEEDABLE_TYPES. */
export function zerosOf(type: string, n: number): FeedData {
  switch (type) {
    case 'float32':
      return new Float32Array(n);
    case 'float16':
      return new Uint16Array(n);
    case 'float64':
      return new Float64Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'int64':
      return new BigInt64Array(n);
    case 'uint8':
    case 'bool':
      return new Uint8Array(n);
    case 'int8':
      return new Int8Array(n);
    default:
      throw new Error(`no zero tensor for input type ${type} (feedable: ${[...FEEDABLE_TYPES].join(', ')})`);
  }
}

/**
 * Raw-tensor feeds made ready to post to a session thread without copying them on the calling (main) thread: a
 * structured clone copies every byte there, about 16 ms per 24 MiB, so a large tensor input would hold the event
 * loop. Which thread owns what afterwards:
 * - an array that is the whole of its ArrayBuffer: the buffer is transferred, and the caller's array is detached
 *   (reads as empty) from the post on. This is every feed the v2 parser, the tensor batcher and the warm-up make.
 * - an array backed by a SharedArrayBuffer: shared as it is (a clone shares it too); its owner must not change it
 *   until the run settles.
 * - a view of part of a larger ArrayBuffer (a small Buffer from Node's pool, a sub-range of a body): only its own
 *   bytes are copied (a clone would copy the whole of the larger buffer), since the rest may belong to others.
 * A buffer Node marks untransferable is cloned by postMessage instead of moved; one buffer behind several feeds is
 * listed once. The caller must not give the same array to two runs: the second finds it detached (and fails).
 */
export function feedsForTransfer(feeds: Record<string, FeedTensor>): { feeds: Record<string, FeedTensor>; transfer: ArrayBuffer[] } {
  const out: Record<string, FeedTensor> = {};
  const transfer = new Set<ArrayBuffer>();
  for (const [name, feed] of Object.entries(feeds)) {
    let data = feed.data;
    const buffer = data.buffer;
    // An empty array is cloned (free), never transferred: one whose buffer was already transferred (detached) would
    // cross as a message the worker cannot read and drops ('messageerror'), a run never answered; cloned, it makes
    // postMessage throw here instead, and the run fails at once.
    if (buffer instanceof ArrayBuffer && data.byteLength > 0) {
      if (data.byteOffset !== 0 || data.byteLength !== buffer.byteLength) data = ownCopy(data);
      transfer.add(data.buffer as ArrayBuffer);
    }
    out[name] = { data, dims: feed.dims, type: feed.type };
  }
  return { feeds: out, transfer: [...transfer] };
}

/** A copy of `data` in a buffer of its own, of the same kind (a Node Buffer, whose slice() is a view, as Uint8Array). */
function ownCopy(data: FeedData): FeedData {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  const Kind = (Buffer.isBuffer(data) ? Uint8Array : data.constructor) as new (buffer: ArrayBuffer) => FeedData;
  return new Kind(bytes.buffer);
}
