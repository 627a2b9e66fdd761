import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { ModelEntry } from '../config/manifest.js';
import { isUrlSource, sha256File } from './source.js';

/**
 * The local files a manifest entry is built from (model sources and label files), and its fingerprint: the entry
 * itself plus the sha256 of each of those files' contents. Two loads of one name with the same fingerprint serve
 * the same thing, so the registry compares fingerprints, not manifest entries: a model or labels file replaced in
 * place is a change even where the manifest is not. URL sources are not read: their sha256 is in the entry (and so
 * in the fingerprint), and the download is checked against it.
 */

export interface ModelFile {
  /** Where the manifest names it, e.g. `source`, `labels`, `detector.source`, `recognizer.labels`. */
  field: string;
  /** Absolute path (relative manifest paths resolved against the manifest's folder). */
  path: string;
}

/** A file the manifest names that is not there: one line, naming the entry, the field, the path. */
export class ModelFileMissingError extends Error {
  constructor(
    readonly model: string,
    readonly field: string,
    readonly path: string,
    detail: string,
  ) {
    super(`manifest entry "${model}" ${field}: ${path} ${detail}`);
    this.name = 'ModelFileMissingError';
  }
}

/** The entry's local files, in a fixed order. */
export function localFilesOf(entry: ModelEntry, baseDir: string): ModelFile[] {
  const files: ModelFile[] = [];
  const add = (field: string, value: string | undefined) => {
    if (value !== undefined && !isUrlSource(value)) files.push({ field, path: resolve(baseDir, value) });
  };
  if (entry.task === 'ocr') {
    add('detector.source', entry.detector.source);
    add('recognizer.source', entry.recognizer.source);
    add('recognizer.labels', entry.recognizer.labels);
  } else {
    add('source', entry.source);
    if (entry.task !== 'tensor') add('labels', entry.labels);
  }
  return files;
}

/**
 * The entry's fingerprint (hex sha256 over the entry's JSON and each local file's field and content hash). Throws
 * ModelFileMissingError for a file that is absent, not a regular file, or unreadable: nothing is loaded then.
 */
export async function fingerprintOf(entry: ModelEntry, baseDir: string): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify(entry));
  for (const file of localFilesOf(entry, baseDir)) {
    let digest: string;
    try {
      const s = await stat(file.path);
      if (!s.isFile()) throw new ModelFileMissingError(entry.name, file.field, file.path, 'is not a file');
      digest = await sha256File(file.path);
    } catch (err) {
      if (err instanceof ModelFileMissingError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      throw new ModelFileMissingError(entry.name, file.field, file.path, code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? (err as Error).message})`);
    }
    hash.update(`\0${file.field}\0${digest}`);
  }
  return hash.digest('hex');
}
