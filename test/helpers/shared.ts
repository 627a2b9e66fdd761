/**
 * Access to the real models and photos in the shared folder ($OCULAR_SHARED_DIR, default ../shared).
 * They are never copied into the repository. Where they are absent a test skips with a printed reason, except
 * under OCULAR_REQUIRE_SHARED=1 (set by .ci/run), where their absence is a failure.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import onnxProto from 'onnx-proto';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedDir = resolve(process.env['OCULAR_SHARED_DIR'] ?? join(projectRoot, '..', 'shared'));
export const sharedRequired = process.env['OCULAR_REQUIRE_SHARED'] === '1';

export function sharedPath(...parts: string[]): string {
  return join(sharedDir, ...parts);
}

export function modelPath(model: string, file = 'model.onnx'): string {
  return sharedPath('models', model, file);
}

export function imagePath(name: string): string {
  return sharedPath('images', name);
}

interface SkipCapable {
  fail(message: string): unknown;
  comment(...args: unknown[]): void;
  skip?: unknown;
}

/**
 * True when every named shared file exists. Otherwise prints why the test cannot run, and fails the test where
 * shared files are required.
 */
export function haveShared(t: SkipCapable, ...relPaths: string[]): boolean {
  const missing = relPaths.filter((p) => !existsSync(sharedPath(p)));
  if (!existsSync(sharedDir)) missing.unshift(sharedDir);
  if (missing.length === 0) return true;
  const reason = `shared models/images absent (${missing.join(', ')}); set OCULAR_SHARED_DIR`;
  if (sharedRequired) t.fail(`OCULAR_REQUIRE_SHARED=1 but ${reason}`);
  else t.comment(`SKIP: ${reason}`);
  return false;
}

/** Options for t.test(name, opts, fn) that skip the whole subtest (with the reason) when shared files are absent. */
export function sharedTestOptions(...relPaths: string[]): { skip?: string } {
  const missing = relPaths.filter((p) => !existsSync(sharedPath(p)));
  if (missing.length === 0 || sharedRequired) return {};
  return { skip: `shared files absent: ${missing.join(', ')} (set OCULAR_SHARED_DIR)` };
}

export interface ReferenceTensor {
  name: string;
  dims: number[];
  data: Float32Array;
}

/** Reads one serialized onnx.TensorProto (float32, raw_data) as in the ONNX Model Zoo's test_data_set_* files. */
export function readTensorProto(path: string): ReferenceTensor {
  const proto = onnxProto.onnx.TensorProto.decode(readFileSync(path));
  if (proto.dataType !== 1) throw new Error(`${path}: data_type ${proto.dataType}, only float32 (1) is supported`);
  const dims = proto.dims.map((d) => Number(d));
  const raw = proto.rawData;
  // Copy into an aligned buffer: raw_data sits at an arbitrary offset inside the decoded message.
  const data = new Float32Array(raw.byteLength / 4);
  new Uint8Array(data.buffer).set(raw);
  return { name: proto.name, dims, data };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}
