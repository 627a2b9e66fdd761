import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { InferenceSession, Tensor } from 'onnxruntime-common';
import type { TensorMeta } from '../types.js';
import { zerosOf } from './feeds.js';
import type { WorkerInit } from './worker-protocol.js';

/** Node counts per execution provider from one profiled warm-up run: which provider runs how much of a model. */

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

/** Zeros of `dims`; float16 (as its bits) too, which no request can feed but a model's profiled run must. */
export function zerosFor(type: string, dims: readonly number[]): Tensor {
  const size = dims.reduce((a, b) => a * b, 1);
  if (type === 'float16') return new ort.Tensor('float16', new Uint16Array(size), dims);
  return new ort.Tensor(type as Tensor.Type, zerosOf(type, size), dims);
}

/**
 * Zero feeds of the profiled run's shape: `warmupDims` for the image input (its batch dim replaced by the model's
 * own where that is fixed, so a caller may ask for a full batch without knowing the model), else each input's fixed
 * shape.
 */
export function profileFeeds(init: WorkerInit, inputName: string, inputs: readonly TensorMeta[]): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const input of inputs) {
    let dims: number[];
    if (input.name === inputName && init.warmupDims !== undefined) {
      const fixedBatch = input.shape[0];
      dims = fixedBatch !== undefined && fixedBatch >= 0 && init.warmupDims.length > 0 ? [fixedBatch, ...init.warmupDims.slice(1)] : init.warmupDims;
    } else {
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
export async function profileNodeCounts(session: InferenceSession, feeds: Record<string, Tensor>, dir: string): Promise<Record<string, number>> {
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
