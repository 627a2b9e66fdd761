/**
 * Worker-thread entry: owns one onnxruntime session and runs it.
 *
 * `session.run` is synchronous native code in onnxruntime-node (its promise only defers the call with
 * setImmediate), so it blocks the thread it runs on; each session lives in a worker thread of its own and the
 * main thread never waits on it. Messages are handled one at a time, in arrival order: the batch buffer below is
 * reused by every run, so two runs must never overlap.
 *
 * Protocol (types below): the parent passes a `WorkerInit` as workerData; the worker answers `ready` (or
 * `initError`), then serves `run` / `runTensors` / `hold` requests, each answered by `result` or `error` with the
 * request's id. `crash` and a `hold` released with 2 end the thread (fault tests); `close` releases the session.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-common';
import { normalizeInto, type NormalizeParams } from '../../tasks/preprocess/normalize.js';
import type { ExactData, Outputs, ProviderName, TensorMeta } from '../types.js';
import { createSessionWithFallback } from './providers.js';
import { lowerCurrentThread } from './thread-priority.js';

export interface WorkerInit {
  modelPath: string;
  providers: ProviderName[];
  fallbackToCpu: boolean;
  gpuDeviceId: number;
  intraOpNumThreads: number;
  interOpNumThreads: number;
  normalize: NormalizeParams;
  /** The image input; default the model's first input. */
  inputName?: string;
  /** Whether to count nodes per provider with one profiled run (only a pool's first instance does). */
  profile: boolean;
  /** Shape of the profiled run's image input; default the model's input shape with a dynamic batch of 1. */
  warmupDims?: number[];
  /** Nice value for this thread and the intra-op threads onnxruntime starts (thread-priority.ts); 0: unchanged. */
  nice?: number;
}

export type FeedData = Float32Array | Int32Array | BigInt64Array | Uint8Array | Int8Array | Float64Array;

export interface FeedTensor {
  data: FeedData;
  dims: number[];
  type: string;
}

/** Where one image's RGB bytes lie in a run's shared slot. */
export interface SlotItem {
  byteOffset: number;
  width: number;
  height: number;
}

export type ToWorker =
  | {
      type: 'run';
      id: number;
      /** Owned by the parent's slot pool; the worker only reads it, and only until it answers this id. */
      slot: SharedArrayBuffer;
      items: SlotItem[];
      tensorHeight: number;
      tensorWidth: number;
      padValue: number;
      /** Rows of the batch tensor when more than the items (ImageBatch.padTo); outputs keep the items' rows only. */
      padTo?: number;
      /** Test hook (SessionPool.injectFault): this run throws, or ends the thread, instead of running. */
      fault?: WorkerFault;
    }
  | { type: 'runTensors'; id: number; feeds: Record<string, FeedTensor>; fault?: WorkerFault }
  /** flag: Int32 at index 0; the worker blocks until it is non-zero (1: answer, 2: crash). */
  | { type: 'hold'; id: number; flag: SharedArrayBuffer }
  | { type: 'crash'; code?: number }
  | { type: 'close' };

export type FromWorker =
  | {
      type: 'ready';
      provider: ProviderName;
      fallbackReason?: string;
      inputName: string;
      inputs: TensorMeta[];
      outputs: TensorMeta[];
      nodeCounts: Record<string, number>;
      /** Why nodeCounts is empty although profiling was asked for. */
      profileError?: string;
      /** Why the thread's priority could not be lowered as asked. */
      niceError?: string;
    }
  | { type: 'initError'; message: string }
  | { type: 'result'; id: number; outputs: Outputs }
  | { type: 'error'; id: number; message: string }
  | { type: 'held'; id: number }
  | { type: 'closed' };

/** Injected faults (tests only): 'throw' fails one run as a session error would; 'exit' ends the thread mid-run. */
export type WorkerFault = 'throw' | 'exit';

/** Exit code of a worker ended by the `crash` test hook. */
export const CRASH_EXIT_CODE = 70;

const FEED_TYPES: ReadonlySet<string> = new Set(['float32', 'float64', 'int32', 'int64', 'uint8', 'int8', 'bool']);

export function tensorMetaOf(meta: InferenceSession.ValueMetadata): TensorMeta {
  if (!meta.isTensor) return { name: meta.name, type: 'non-tensor', shape: [], symbolicShape: [] };
  return {
    name: meta.name,
    type: meta.type,
    shape: meta.shape.map((d) => (typeof d === 'number' ? d : -1)),
    symbolicShape: meta.shape.map((d) => (typeof d === 'string' ? d : '')),
  };
}

/** Counts distinct node names per `args.provider` in an onnxruntime profile (Chrome trace JSON). */
export function countNodesPerProvider(trace: unknown): Record<string, number> {
  const names = new Map<string, Set<string>>();
  if (!Array.isArray(trace)) return {};
  for (const event of trace as unknown[]) {
    if (typeof event !== 'object' || event === null) continue;
    const e = event as { cat?: unknown; name?: unknown; args?: { provider?: unknown } };
    if (e.cat !== 'Node' || typeof e.name !== 'string' || typeof e.args?.provider !== 'string') continue;
    // Each node appears as "<node>_kernel_time" (older versions add "_fence_before/after" events as well).
    if (e.name.endsWith('_fence_before') || e.name.endsWith('_fence_after')) continue;
    const node = e.name.replace(/_kernel_time$/, '');
    let set = names.get(e.args.provider);
    if (set === undefined) names.set(e.args.provider, (set = new Set()));
    set.add(node);
  }
  return Object.fromEntries([...names].map(([provider, set]) => [provider, set.size]));
}

function zerosFor(type: string, dims: readonly number[]): Tensor {
  const size = dims.reduce((a, b) => a * b, 1);
  switch (type) {
    case 'float32':
      return new ort.Tensor('float32', new Float32Array(size), dims);
    case 'float64':
      return new ort.Tensor('float64', new Float64Array(size), dims);
    case 'float16':
      return new ort.Tensor('float16', new Uint16Array(size), dims);
    case 'int32':
      return new ort.Tensor('int32', new Int32Array(size), dims);
    case 'int64':
      return new ort.Tensor('int64', new BigInt64Array(size), dims);
    case 'uint8':
    case 'bool':
      return new ort.Tensor(type, new Uint8Array(size), dims);
    case 'int8':
      return new ort.Tensor('int8', new Int8Array(size), dims);
    default:
      throw new Error(`no warm-up tensor for input type ${type}`);
  }
}

/** Zero feeds of the profiled run's shape: `warmupDims` for the image input, else each input's fixed shape. */
function profileFeeds(init: WorkerInit, inputName: string, inputs: readonly TensorMeta[]): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const input of inputs) {
    let dims: number[];
    if (input.name === inputName && init.warmupDims !== undefined) dims = init.warmupDims;
    else {
      dims = input.shape.map((d, i) => (d >= 0 ? d : i === 0 ? 1 : -1));
      if (dims.includes(-1)) {
        throw new Error(`input ${input.name} has dynamic dims ${JSON.stringify(input.symbolicShape)}: set warmupDims`);
      }
    }
    feeds[input.name] = zerosFor(input.type, dims);
  }
  return feeds;
}

/**
 * Node counts per provider from ONE profiled run of the serving session itself, created with profiling on:
 * endProfiling() stops the tracing for good (later runs are not traced: checked with onnxruntime-node 1.30), so
 * no second session is created just to count. The trace lives in `dir`, which the caller removes.
 */
async function profileNodeCounts(session: InferenceSession, feeds: Record<string, Tensor>, dir: string): Promise<Record<string, number>> {
  await session.run(feeds);
  session.endProfiling();
  const files = (await readdir(dir)).filter((f) => f.endsWith('.json'));
  const counts: Record<string, number> = {};
  for (const file of files) {
    const trace: unknown = JSON.parse(await readFile(join(dir, file), 'utf8'));
    for (const [p, n] of Object.entries(countNodesPerProvider(trace))) counts[p] = (counts[p] ?? 0) + n;
  }
  return counts;
}

function float32Of(tensor: Tensor): Float32Array {
  const data = tensor.data;
  if (data instanceof Float32Array) return data;
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
function collectOutputs(results: InferenceSession.ReturnType): { outputs: Outputs; transfer: ArrayBuffer[] } {
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
function firstRows(results: InferenceSession.ReturnType, n: number, rows: number): InferenceSession.ReturnType {
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

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function crash(code = CRASH_EXIT_CODE): never {
  process.exit(code);
}

async function main(port: NonNullable<typeof parentPort>, init: WorkerInit): Promise<void> {
  const post = (msg: FromWorker, transfer?: ArrayBuffer[]): void => port.postMessage(msg, transfer);
  // Before the session exists, so that onnxruntime's intra-op threads inherit the lower priority.
  const niced = init.nice !== undefined && init.nice > 0 ? lowerCurrentThread(init.nice) : undefined;

  let session: InferenceSession;
  let inputName: string;
  const profileDir = init.profile ? await mkdtemp(join(tmpdir(), 'ocular-profile-')) : undefined;
  try {
    const created = await createSessionWithFallback(ort, init.modelPath, {
      ...(profileDir !== undefined && { enableProfiling: true, profileFilePrefix: join(profileDir, 'profile') }),
      providers: init.providers,
      fallbackToCpu: init.fallbackToCpu,
      gpuDeviceId: init.gpuDeviceId,
      intraOpNumThreads: init.intraOpNumThreads,
      interOpNumThreads: init.interOpNumThreads,
      // Idle intra-op threads sleep instead of spinning: the spinning burns CPU that image decoding on the other
      // threads needs (on 2 busy cores, 19-22 ms of CPU per request spinning against 13-16 not; docs/PERFORMANCE.md).
      allowSpinning: false,
    });
    session = created.session;
    inputName = init.inputName ?? session.inputNames[0] ?? '';
    if (!session.inputNames.includes(inputName)) {
      throw new Error(`model has no input named '${inputName}' (inputs: ${session.inputNames.join(', ')})`);
    }
    const inputs = session.inputMetadata.map(tensorMetaOf);
    const outputs = session.outputMetadata.map(tensorMetaOf);
    let nodeCounts: Record<string, number> = {};
    let profileError: string | undefined;
    if (profileDir !== undefined) {
      try {
        nodeCounts = await profileNodeCounts(session, profileFeeds(init, inputName, inputs), profileDir);
      } catch (err) {
        profileError = messageOf(err);
        session.endProfiling(); // whatever failed, this session must not go on tracing
      } finally {
        await rm(profileDir, { recursive: true, force: true });
      }
    }
    post({
      type: 'ready',
      provider: created.provider,
      ...(created.fallbackReason !== undefined && { fallbackReason: created.fallbackReason }),
      inputName,
      inputs,
      outputs,
      nodeCounts,
      ...(profileError !== undefined && { profileError }),
      ...(niced !== undefined && !niced.ok && { niceError: niced.reason }),
    });
  } catch (err) {
    if (profileDir !== undefined) await rm(profileDir, { recursive: true, force: true });
    post({ type: 'initError', message: messageOf(err) });
    port.close(); // nothing left to do: the thread ends once the message is out
    return;
  }

  // The batch tensor, owned by this thread and reused by every run; it grows only when a larger batch arrives.
  let batch = new Float32Array(0);
  const params = init.normalize;

  const runImages = async (msg: Extract<ToWorker, { type: 'run' }>): Promise<InferenceSession.ReturnType> => {
    const n = msg.items.length;
    const rows = Math.max(n, msg.padTo ?? n);
    const h = msg.tensorHeight;
    const w = msg.tensorWidth;
    const need = rows * 3 * h * w;
    if (batch.length < need) batch = new Float32Array(need);
    const target = batch.subarray(0, need);
    const slot = new Uint8Array(msg.slot);
    msg.items.forEach((item, i) => {
      const bytes = slot.subarray(item.byteOffset, item.byteOffset + item.width * item.height * 3);
      normalizeInto(bytes, item.width, item.height, params, target, i, h, w, msg.padValue);
    });
    // Padding rows are not cleared: a row's outputs depend on that row alone (and the dropped rows' outputs are
    // never read), while clearing up to 31 rows of 416x416x3 floats would write 64 MB per padded batch.
    const dims = params.layout === 'NCHW' ? [rows, 3, h, w] : [rows, h, w, 3];
    const results = await session.run({ [inputName]: new ort.Tensor('float32', target, dims) });
    return rows === n ? results : firstRows(results, n, rows);
  };

  const runTensors = async (feeds: Record<string, FeedTensor>): Promise<InferenceSession.ReturnType> => {
    const tensors: Record<string, Tensor> = {};
    for (const [name, feed] of Object.entries(feeds)) {
      if (!FEED_TYPES.has(feed.type)) throw new Error(`feed ${name}: unsupported tensor type ${feed.type}`);
      tensors[name] = new ort.Tensor(feed.type as Tensor.Type, feed.data, feed.dims);
    }
    return session.run(tensors);
  };

  const handle = async (msg: ToWorker): Promise<void> => {
    switch (msg.type) {
      case 'run':
      case 'runTensors':
        if (msg.fault === 'exit') crash();
        try {
          if (msg.fault === 'throw') throw new Error('injected fault: the session failed on this batch');
          const results = msg.type === 'run' ? await runImages(msg) : await runTensors(msg.feeds);
          const { outputs, transfer } = collectOutputs(results);
          post({ type: 'result', id: msg.id, outputs }, transfer);
        } catch (err) {
          post({ type: 'error', id: msg.id, message: messageOf(err) });
        }
        return;
      case 'hold': {
        // Test hook: blocks this thread the way a long native session.run does, until the parent stores a value.
        const flag = new Int32Array(msg.flag);
        post({ type: 'held', id: msg.id });
        Atomics.wait(flag, 0, 0);
        if (Atomics.load(flag, 0) === 2) crash();
        post({ type: 'result', id: msg.id, outputs: {} });
        return;
      }
      case 'close':
        try {
          await session.release();
        } finally {
          post({ type: 'closed' });
        }
        port.close();
        return;
      case 'crash':
        crash(msg.code);
    }
  };

  // One message at a time, in order (see the file comment); `crash` jumps the queue, as a real fault would.
  let queue: Promise<void> = Promise.resolve();
  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'crash') crash(msg.code);
    queue = queue.then(() => handle(msg)).catch((err: unknown) => {
      // handle() answers run errors itself; anything else here is a bug, and the parent learns of it by the exit.
      process.stderr.write(`ocular worker: ${messageOf(err)}\n`);
      crash(1);
    });
  });
}

if (parentPort !== null) {
  void main(parentPort, workerData as WorkerInit);
}
