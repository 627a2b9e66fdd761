import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { InputSpec } from '../config/input-spec.js';
import type { ProviderName } from '../config/providers.js';
import { normalizeParamsOf, padPixelOf } from './runner/normalize.js';
import type { Uint8Input } from './runner/options.js';
import { addUint8Prefix, PREFIX_VERSION } from './runner/uint8-prefix.js';
import { addRegionMask, MASK_VERSION } from './runner/region-mask.js';

/**
 * The loader's part of uint8 input (runner/uint8-prefix.ts): whether a stage gets it, and the combined model's file.
 *
 * The combined model is written to `<cacheDir>/uint8/<key>.onnx`, the key a sha256 of the original model's bytes,
 * the normalisation, the input name and PREFIX_VERSION: a file of that name is always the right one, so it is
 * reused as is, and written (to a temporary name, then renamed) only when missing.
 */

export type Uint8Decision = { use: true } | { use: false; reason: string };

/**
 * Whether a stage takes uint8 input: the manifest's `input.uint8Input` against the stage's first provider, and a
 * stage whose items are padded after normalising keeps float input unless a pixel normalises to the pad value.
 */
export function decideUint8Input(
  spec: InputSpec,
  firstProvider: ProviderName | undefined,
  padsItemsWith: number | undefined,
): Uint8Decision {
  if (spec.uint8Input === 'off') return { use: false, reason: 'uint8Input is off' };
  if (spec.uint8Input === 'gpu' && (firstProvider === undefined || firstProvider === 'cpu')) {
    return { use: false, reason: 'uint8Input is gpu and the stage runs on the CPU provider' };
  }
  if (padsItemsWith !== undefined && padPixelOf(normalizeParamsOf(spec), padsItemsWith) === undefined) {
    return { use: false, reason: `the stage pads its items with ${padsItemsWith} after normalising, which no pixel gives` };
  }
  return { use: true };
}

/** Builds (or finds in the cache) the model with the uint8 prefix; throws PrefixError where the model cannot take it. */
export async function prepareUint8Model(modelPath: string, spec: InputSpec, cacheDir: string, floatSession: boolean): Promise<Uint8Input> {
  const bytes = await readFile(modelPath);
  const params = normalizeParamsOf(spec);
  const built = addUint8Prefix(bytes, params, spec.name);
  const key = createHash('sha256')
    .update(bytes)
    .update(JSON.stringify({ params, name: spec.name ?? null, version: PREFIX_VERSION }))
    .digest('hex');
  const path = await cachedModel(join(resolve(cacheDir), 'uint8'), key, built.model);
  return { modelPath: path, original: built.original, floatSession, gpuOnly: spec.uint8Input === 'gpu' };
}

/**
 * Builds (or finds in the cache, `<cacheDir>/mask/`, keyed as above) the detector with its padding masked out
 * (runner/region-mask.ts); throws MaskError where the model holds an operator the mask does not cover.
 */
export async function prepareRegionMaskModel(modelPath: string, cacheDir: string): Promise<string> {
  const bytes = await readFile(modelPath);
  const built = addRegionMask(bytes);
  const key = createHash('sha256').update(bytes).update(JSON.stringify({ version: MASK_VERSION })).digest('hex');
  return cachedModel(join(resolve(cacheDir), 'mask'), key, built);
}

/** `<dir>/<key>.onnx`, written (to a temporary name, then renamed) only when no file of that name and size is there. */
async function cachedModel(dir: string, key: string, model: Uint8Array): Promise<string> {
  const path = join(dir, `${key}.onnx`);
  const present = await stat(path).then((s) => s.isFile() && s.size === model.length, () => false);
  if (!present) {
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${key}.${randomBytes(6).toString('hex')}.part`);
    try {
      await writeFile(tmp, model);
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
  }
  return path;
}
