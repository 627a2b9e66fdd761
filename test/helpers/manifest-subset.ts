/**
 * A manifest of some of the shared manifest's models (by name), with every `source` and `labels` path made
 * absolute, written into a temp folder: a test that needs a few models loads only those, whatever else the shared
 * manifest serves.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { sharedManifestPath } from './app.js';

type Json = Record<string, unknown>;

function absolutise(value: unknown, base: string): unknown {
  if (Array.isArray(value)) return value.map((v) => absolutise(v, base));
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value as Json).map(([k, v]) => [
      k,
      (k === 'source' || k === 'labels') && typeof v === 'string' && !isAbsolute(v) && !/^https?:/.test(v) ? resolve(base, v) : absolutise(v, base),
    ]),
  );
}

/** Writes `<dir>/manifest.json` with the named models (in that order), each optionally patched; returns its path. */
export function writeSubsetManifest(dir: string, names: string[], patch: Record<string, Json> = {}): string {
  const base = JSON.parse(readFileSync(sharedManifestPath, 'utf8')) as { models: Json[] };
  const models = names.map((name) => {
    const m = base.models.find((x) => x['name'] === name);
    if (m === undefined) throw new Error(`${name} is not in ${sharedManifestPath}`);
    return { ...(absolutise(m, join(sharedManifestPath, '..')) as Json), ...patch[name] };
  });
  const path = join(dir, 'manifest.json');
  writeFileSync(path, JSON.stringify({ models }));
  return path;
}
