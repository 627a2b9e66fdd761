/**
 * Label files: one label per line, line i = class i.
 *
 * Entries are taken verbatim. A label may be whitespace (PaddleOCR's dictionary has U+3000, the ideographic
 * space, as an entry) or even empty, and dropping or trimming one would shift every later class by one. The
 * only normalisations are file-format artefacts, never label content:
 * - a UTF-8 byte-order mark at the very start of the text is removed;
 * - one final empty entry is dropped, so a file that ends with a newline has no phantom last label (a file
 *   that ends with two newlines keeps one empty label);
 * - exactly one trailing '\r' is removed from each line, so a CRLF file reads like an LF one. A label cannot
 *   therefore end with '\r'; no known label file needs that.
 */
import { readFile } from 'node:fs/promises';
import { ModelCheckError } from '../core/model-check.js';
import { ModelMetadataError, parseClassNames } from '../core/model-metadata.js';
import type { Stage } from '../core/stage.js';
import type { PipelineDeps } from '../core/task-pipeline.js';
import { OcularError } from '../errors.js';

export function parseLabels(text: string): string[] {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  const lines = body.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line.endsWith('\r')) lines[i] = line.slice(0, -1);
  }
  return lines;
}

export async function readLabels(path: string): Promise<string[]> {
  return parseLabels(await readFile(path, 'utf8'));
}

/** Where an entry's class names come from: its `labels` (and `labelsSha256`, for a URL), or the model itself. */
export interface LabelsSource {
  labels?: string | undefined;
  labelsSha256?: string | undefined;
}

/**
 * A model's class names: the manifest's labels file (a path, or a URL downloaded and cached as model sources are),
 * else the class names the model carries in its ONNX metadata (`names`, as Ultralytics exports write it:
 * core/model-metadata.ts). Neither: the model fails to load, naming the field.
 */
export async function loadLabels(model: string, field: string, entry: LabelsSource, stage: Stage, deps: Pick<PipelineDeps, 'resolveFile'>): Promise<string[]> {
  if (entry.labels !== undefined) return readLabels(await deps.resolveFile(entry.labels, entry.labelsSha256));
  let names: string | undefined;
  try {
    names = (await stage.metadata()).get('names');
  } catch (err) {
    throw new ModelCheckError(model, field, `no labels file given, and the model's metadata cannot be read (${(err as Error).message})`);
  }
  if (names === undefined) {
    throw new ModelCheckError(model, field, `no labels file given, and the model's metadata has no class names ("names"): set ${field}`);
  }
  try {
    return parseClassNames(names);
  } catch (err) {
    if (err instanceof ModelMetadataError) throw new ModelCheckError(model, field, `the model's metadata "names" cannot be read: ${err.message}`);
    throw err;
  }
}

/**
 * A request's `classes=` list: comma-separated labels or class indices (a label that looks like an index is taken
 * as the label). Anything else is 400 INVALID_PARAMETER, naming the part and the model.
 */
export function parseClassList(spec: string, labels: readonly string[], model: string): Set<number> {
  const set = new Set<number>();
  for (const part of spec.split(',').map((s) => s.trim()).filter((s) => s.length > 0)) {
    const byName = labels.indexOf(part);
    const asIndex = /^\d+$/.test(part) ? Number(part) : NaN;
    if (byName !== -1) set.add(byName);
    else if (Number.isInteger(asIndex) && asIndex < labels.length) set.add(asIndex);
    else throw new OcularError('INVALID_PARAMETER', `classes: "${part.slice(0, 64)}" is neither a label nor a class index of ${model}`);
  }
  return set;
}
