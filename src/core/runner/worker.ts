/**
 * Worker-thread entry: owns one onnxruntime session and runs it.
 *
 * `session.run` is synchronous native code in onnxruntime-node (its promise only defers the call with
 * setImmediate), so it blocks the thread it runs on; each session lives in a worker thread of its own and the
 * main thread never waits on it. Messages are handled one at a time, in arrival order: the batch buffer below is
 * reused by every run, so two runs must never overlap.
 *
 * The messages it takes and answers are in worker-protocol.ts; node counting in profiling.ts; what a run sends back
 * in collect-outputs.ts; the test hooks in fault-injection.ts.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-common';
import type { TensorMeta } from '../types.js';
import { collectOutputs, firstRows } from './collect-outputs.js';
import { CRASH_EXIT_CODE, waitForRelease } from './fault-injection.js';
import { copyPixelsInto, nearestPadPixelOf, padPixelOf } from './normalize.js';
import { profileFeeds, profileNodeCounts } from './profiling.js';
import { createSessionWithFallback } from './providers.js';
import { lowerCurrentThread } from './thread-priority.js';
import { FEEDABLE_TYPES, zerosOf, type FeedData, type FeedTensor } from './feeds.js';
import { ShapeSet } from './shape-set.js';
import { withDeviceLock } from './device-lock.js';
import { PIXELS_INPUT, pixelDimsOf } from './uint8-prefix.js';
import { REGION_INPUT, regionData } from './region-mask.js';
import { ImageFeedBuilder, imageFeedPlanOf, withBatchDim, type ImageFeedPlan } from './image-feed.js';
import type { FromWorker, SlotItem, ToWorker, WorkerInit } from './worker-protocol.js';



export function tensorMetaOf(meta: InferenceSession.ValueMetadata): TensorMeta {
  if (!meta.isTensor) return { name: meta.name, type: 'non-tensor', shape: [], symbolicShape: [] };
  return {
    name: meta.name,
    type: meta.type,
    shape: meta.shape.map((d) => (typeof d === 'number' ? d : -1)),
    symbolicShape: meta.shape.map((d) => (typeof d === 'string' ? d : '')),
  };
}

/** `feed` with zero rows appended up to `rows` along dim 0 (a copy: the caller's feed is left as it is). */
function padRows(feed: FeedTensor, rows: number): Tensor {
  const have = feed.dims[0] ?? 0;
  const per = have > 0 ? feed.data.length / have : 0;
  const data = zerosOf(feed.type, rows * per);
  (data as FeedData & { set(a: ArrayLike<number | bigint>): void }).set(feed.data as ArrayLike<number | bigint>);
  return new ort.Tensor(feed.type as Tensor.Type, data, [rows, ...feed.dims.slice(1)]);
}

/** Every output with a leading batch dimension of 1: a batchless model's run, as the server sees it (image-feed.ts). */
function addBatchDim(results: InferenceSession.ReturnType): InferenceSession.ReturnType {
  const out: Record<string, Tensor> = {};
  for (const [name, value] of Object.entries(results)) {
    const tensor = value as Tensor;
    out[name] = new ort.Tensor(tensor.type as Tensor.Type, tensor.data as FeedData, [1, ...tensor.dims]);
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

  // `session` runs images; where they go as uint8 pixels (init.uint8Input) it is the model with the normalisation
  // prefix, and `floatSession`, where the stage also serves raw tensors, is the original model for those.
  let session: InferenceSession;
  let floatSession: InferenceSession | undefined;
  let inputName: string;
  let uint8 = init.uint8Input;
  // How images become the model's own input (image-feed.ts), where images go to it without the uint8 prefix and its
  // input is one the runner can feed; otherwise the stage's model check refuses the model, naming the input.
  let plan: ImageFeedPlan | undefined;
  // Native calls on a WebGPU session hold the process's device lock (device-lock.ts): the creation attempt (and its
  // profiled run) wherever WebGPU was asked for, then every run and the release where the session got it.
  let onWebgpu = init.deviceLock !== undefined;
  const guarded = <T>(fn: () => Promise<T>): Promise<T> =>
    onWebgpu && init.deviceLock !== undefined ? withDeviceLock(init.deviceLock, fn) : fn();
  const profileDir = init.profile ? await mkdtemp(join(tmpdir(), 'ocular-profile-')) : undefined;
  try {
    const sessionOptions = {
      ...(profileDir !== undefined && { enableProfiling: true, profileFilePrefix: join(profileDir, 'profile') }),
      providers: init.providers,
      fallbackToCpu: init.fallbackToCpu,
      gpuDeviceId: init.gpuDeviceId,
      intraOpNumThreads: init.intraOpNumThreads,
      interOpNumThreads: init.interOpNumThreads,
      // Idle intra-op threads sleep instead of spinning: spinning burns CPU that image decoding on the other
      // threads needs (docs/PERFORMANCE.md).
      allowSpinning: false,
      exactInt8: init.exactInt8,
      ...(init.cpuMemArena !== undefined && { cpuMemArena: init.cpuMemArena }),
    };
    const created = await guarded(() =>
      createSessionWithFallback(ort, uint8?.modelPath ?? init.modelPath, {
        ...sessionOptions,
        ...(uint8?.gpuOnly === true && { cpuModelPath: init.modelPath }),
      }),
    );
    onWebgpu &&= created.provider === 'webgpu';
    session = created.session;
    // A `gpu`-only uint8 input whose session fell back to the CPU provider runs the float model: no prefix.
    if (uint8 !== undefined && created.modelPath !== uint8.modelPath) uint8 = undefined;
    if (uint8?.floatSession === true) {
      const { enableProfiling: _p, profileFilePrefix: _f, ...plain } = sessionOptions;
      floatSession = (await guarded(() => createSessionWithFallback(ort, init.modelPath, { ...plain, providers: [created.provider], fallbackToCpu: false }))).session;
    }
    inputName = uint8 !== undefined ? uint8.original.name : (init.inputName ?? session.inputNames[0] ?? '');
    const sessionInput = uint8 !== undefined ? PIXELS_INPUT : inputName;
    if (!session.inputNames.includes(sessionInput)) {
      throw new Error(`model has no input named '${inputName}' (inputs: ${session.inputNames.join(', ')})`);
    }
    // What the pool reports is the model's own interface: the prefix's input shows as the original one, and a masked
    // model's region (region-mask.ts) is the worker's own business.
    const sessionInputs = session.inputMetadata.map(tensorMetaOf).filter((i) => i.name !== REGION_INPUT);
    const original = uint8?.original;
    if (uint8 === undefined && init.normalize !== undefined) {
      const imageInput = sessionInputs.find((i) => i.name === inputName);
      try {
        plan = imageInput === undefined ? undefined : imageFeedPlanOf(imageInput);
      } catch {
        plan = undefined;
      }
    }
    const batchless = plan?.batchless === true;
    const inputs = original !== undefined
      ? sessionInputs.map((i) => (i.name === PIXELS_INPUT ? original : i))
      : batchless ? sessionInputs.map((i) => (i.name === inputName ? withBatchDim(i) : i)) : sessionInputs;
    const outputs = session.outputMetadata.map(tensorMetaOf).map((o) => (batchless ? withBatchDim(o) : o));
    let nodeCounts: Record<string, number> = {};
    let profileError: string | undefined;
    if (profileDir !== undefined) {
      // On the CPU the profiled run takes one image: where nodes run does not depend on the batch, and the stage's
      // warm-up runs the full batch anyway (the OCR detector's full batch made this run half a second of the start).
      // On a GPU it keeps the warm-up's shape, which it warms: each new shape costs cuDNN its plans.
      const warm = init.warmupDims;
      const dims = warm !== undefined && warm.length > 0 && created.provider === 'cpu' ? [1, ...warm.slice(1)] : warm;
      try {
        const feeds = uint8 === undefined || init.normalize === undefined
          ? profileFeeds({ ...init, ...(dims !== undefined && { warmupDims: batchless ? dims.slice(1) : dims }) }, inputName, sessionInputs)
          : profileFeeds({ ...init, ...(dims !== undefined && { warmupDims: pixelDimsOf(dims, init.normalize.layout) }) }, PIXELS_INPUT, sessionInputs);
        // A masked model's region (region-mask.ts): the whole tensor, as an unpadded batch.
        if (session.inputNames.includes(REGION_INPUT) && dims !== undefined && init.normalize !== undefined) {
          const [n, h, w] = init.normalize.layout === 'NCHW' ? [dims[0], dims[2], dims[3]] : [dims[0], dims[1], dims[2]];
          feeds[REGION_INPUT] = new ort.Tensor('float32', regionData([], n ?? 1, h ?? 0, w ?? 0), [n ?? 1, 2]);
        }
        nodeCounts = await guarded(() => profileNodeCounts(session, feeds, profileDir));
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
      uint8Input: uint8 !== undefined,
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
  // The model's own input type and layout (ImageFeedBuilder), or, with the uint8 prefix, the pixels as they are
  // (copyPixelsInto).
  let pixelBatch = new Uint8Array(0);
  const params = init.normalize;
  const builder = plan !== undefined && params !== undefined ? new ImageFeedBuilder(plan, params) : undefined;
  const batchless = plan?.batchless === true;
  // Shapes are counted per onnxruntime session: a stage with uint8 input runs images on the session with the prefix
  // and raw tensors on `floatSession`, each with its own shapes (and, on a GPU, its own plans); the larger count is
  // the one a stage's bound holds.
  const shapes = new ShapeSet();
  const masked = session.inputNames.includes(REGION_INPUT);
  const floatShapes = new ShapeSet();
  const shapeCount = (): number => Math.max(shapes.size, floatShapes.size);

  const runImages = async (msg: Extract<ToWorker, { type: 'run' }>): Promise<InferenceSession.ReturnType> => {
    const n = msg.items.length;
    const rows = Math.max(n, msg.padTo ?? n);
    const h = msg.tensorHeight;
    const w = msg.tensorWidth;
    const need = rows * 3 * h * w;
    const slot = new Uint8Array(msg.slot);
    if (params === undefined) throw new Error('this session takes no images: its model has no image input spec');
    const itemBytes = (item: SlotItem): Uint8Array => slot.subarray(item.byteOffset, item.byteOffset + item.width * item.height * 3);
    // Padding rows are not cleared: a row's outputs depend on that row alone (and the dropped rows' outputs are
    // never read), while clearing up to 31 rows of 416x416x3 floats would write 64 MB per padded batch.
    let feed: Tensor;
    if (uint8 !== undefined) {
      if (pixelBatch.length < need) pixelBatch = new Uint8Array(need);
      const target = pixelBatch.subarray(0, need);
      const padded = msg.items.some((item) => item.width !== w || item.height !== h);
      // The exact pixel where one exists; else the nearest (a bucket's rest: the stage loader gives uint8 input to a
      // stage whose answers depend on its padding only where the exact pixel exists).
      const padPixel = padded ? (padPixelOf(params, msg.padValue) ?? nearestPadPixelOf(params, msg.padValue).pixel) : undefined;
      msg.items.forEach((item, i) => copyPixelsInto(itemBytes(item), item.width, item.height, target, i, h, w, padPixel));
      feed = new ort.Tensor('uint8', target, [rows, h, w, 3]);
    } else {
      if (builder === undefined) throw new Error(`this session's image input '${inputName}' is not one images can be fed to`);
      const items = msg.items.map((item) => ({ pixels: itemBytes(item), width: item.width, height: item.height }));
      const built = builder.build(items, rows, h, w, msg.padValue);
      feed = new ort.Tensor(built.type, built.data, built.dims);
    }
    const feeds: Record<string, Tensor> = { [uint8 !== undefined ? PIXELS_INPUT : inputName]: feed };
    shapes.record(feeds);
    // A masked model (region-mask.ts) is told where each image lies in its row; padding rows get the whole tensor.
    if (masked) feeds[REGION_INPUT] = new ort.Tensor('float32', regionData(msg.items, rows, h, w), [rows, 2]);
    const results = await guarded(() => session.run(feeds));
    if (batchless) return addBatchDim(results);
    return rows === n ? results : firstRows(results, n, rows);
  };

  const runTensors = async (feeds: Record<string, FeedTensor>, padTo: number | undefined): Promise<InferenceSession.ReturnType> => {
    const tensors: Record<string, Tensor> = {};
    let rows: number | undefined;
    for (const [name, feed] of Object.entries(feeds)) {
      if (!FEEDABLE_TYPES.has(feed.type)) throw new Error(`feed ${name}: unsupported tensor type ${feed.type}`);
      // A batchless model's image input is seen with a batch dimension of 1 (image-feed.ts), fed without it.
      if (batchless && name === inputName && feed.dims[0] !== 1) throw new Error(`feed ${name}: this model takes one image per run, not ${feed.dims[0]}`);
      const dims = batchless && name === inputName ? feed.dims.slice(1) : feed.dims;
      tensors[name] = new ort.Tensor(feed.type as Tensor.Type, feed.data, dims);
      rows ??= feed.dims[0];
    }
    if (uint8 !== undefined && floatSession === undefined) throw new Error('this session takes images only: its model was built for uint8 pixels');
    // Padding rows (zeros) only where every feed has the same dim 0: then each row is one item, as in a batch.
    const padRowsTo = rows !== undefined && padTo !== undefined && padTo > rows && Object.values(feeds).every((f) => f.dims[0] === rows)
      ? padTo
      : undefined;
    if (padRowsTo !== undefined) for (const [name, feed] of Object.entries(feeds)) tensors[name] = padRows(feed, padRowsTo);
    (floatSession !== undefined ? floatShapes : shapes).record(tensors);
    const target = floatSession ?? session;
    const results = await guarded(() => target.run(tensors));
    if (batchless) return addBatchDim(results);
    return padRowsTo !== undefined && rows !== undefined ? firstRows(results, rows, padRowsTo) : results;
  };

  const handle = async (msg: ToWorker): Promise<void> => {
    switch (msg.type) {
      case 'run':
      case 'runTensors':
        if (msg.fault === 'exit') crash();
        try {
          if (msg.fault === 'throw') throw new Error('injected fault: the session failed on this batch');
          const results = msg.type === 'run' ? await runImages(msg) : await runTensors(msg.feeds, msg.padTo);
          const { outputs, transfer } = collectOutputs(results);
          post({ type: 'result', id: msg.id, outputs, shapes: shapeCount() }, transfer);
        } catch (err) {
          post({ type: 'error', id: msg.id, message: messageOf(err), shapes: shapeCount() });
        }
        return;
      case 'hold':
        // Test hook (fault-injection.ts): blocked as in a long native session.run, until the parent says.
        post({ type: 'held', id: msg.id });
        if (waitForRelease(msg.flag) === 'crash') crash();
        post({ type: 'result', id: msg.id, outputs: {}, shapes: shapeCount() });
        return;
      case 'close':
        try {
          await guarded(() => Promise.all([session.release(), floatSession?.release()]));
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
