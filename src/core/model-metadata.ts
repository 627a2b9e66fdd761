import { readFile } from 'node:fs/promises';
import { readFields, stringOf, WireError } from './onnx-wire.js';

/**
 * An ONNX model's `metadata_props` (ModelProto field 14: key/value strings), where exporters leave what a server
 * needs to know: Ultralytics writes `names` (the class names), `imgsz`, `stride`, `task`, `batch`. Read on the wire
 * (onnx-wire.ts), which walks the model's top-level fields only: the graph's payload is skipped, not decoded.
 */

const MODEL_METADATA_PROPS = 14;
const ENTRY = { key: 1, value: 2 } as const;

export class ModelMetadataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelMetadataError';
  }
}

/** The metadata of model bytes, key to value (a repeated key keeps its last value, as onnxruntime's map does). */
export function metadataOf(modelBytes: Uint8Array): Map<string, string> {
  const props = new Map<string, string>();
  let fields;
  try {
    fields = readFields(modelBytes);
  } catch (err) {
    throw new ModelMetadataError(`not an ONNX model: ${err instanceof WireError ? err.message : String(err)}`);
  }
  for (const f of fields) {
    if (f.field !== MODEL_METADATA_PROPS || !(f.value instanceof Uint8Array)) continue;
    const entry = readFields(f.value);
    const key = stringOf(entry.find((e) => e.field === ENTRY.key));
    if (key !== undefined) props.set(key, stringOf(entry.find((e) => e.field === ENTRY.value)) ?? '');
  }
  return props;
}

/** The metadata of the model file at `path`. */
export async function readModelMetadata(path: string): Promise<Map<string, string>> {
  return metadataOf(await readFile(path));
}

/** The longest `names` text parsed: 100k classes of 100 characters is far more than any detector has. */
export const MAX_NAMES_CHARS = 10 * 1024 * 1024;

/**
 * Ultralytics' `names`: a Python dict literal as `str(dict)` writes it, `{0: 'person', 1: 'bicycle', ...}`. Keys
 * are integers 0..n-1 (in any order, each once); values Python string literals in single or double quotes, with
 * backslash escapes (\\', \\", \\\\, \\n, \\t, \\xNN, \\uNNNN). A JSON object or array of names is taken too (other
 * exporters write those). Anything else throws, naming the position: class names are never guessed.
 */
export function parseClassNames(text: string): string[] {
  if (text.length > MAX_NAMES_CHARS) throw new ModelMetadataError(`names is ${text.length} characters, over the limit of ${MAX_NAMES_CHARS}`);
  const trimmed = text.trim();
  if (trimmed.startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch (err) {
      throw new ModelMetadataError(`names is not a valid list: ${(err as Error).message}`);
    }
    if (!Array.isArray(parsed) || !parsed.every((v) => typeof v === 'string')) throw new ModelMetadataError('names is a list, but not of strings');
    return parsed as string[];
  }
  const byIndex = new Map<number, string>();
  let pos = 0;
  const fail = (what: string): never => {
    throw new ModelMetadataError(`names: ${what} at character ${pos}`);
  };
  const skipSpace = (): void => {
    while (pos < text.length && /\s/.test(text[pos] as string)) pos++;
  };
  const expect = (ch: string): void => {
    skipSpace();
    if (text[pos] !== ch) fail(`expected '${ch}'`);
    pos++;
  };
  const readString = (): string => {
    skipSpace();
    const quote = text[pos];
    if (quote !== "'" && quote !== '"') fail('expected a quoted name');
    pos++;
    let out = '';
    for (;;) {
      if (pos >= text.length) fail('unterminated name');
      const ch = text[pos++] as string;
      if (ch === quote) return out;
      if (ch !== '\\') {
        out += ch;
        continue;
      }
      const esc = text[pos++];
      const hex = (n: number): string => {
        const digits = text.slice(pos, pos + n);
        if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(digits)) fail('bad escape');
        pos += n;
        return String.fromCodePoint(parseInt(digits, 16));
      };
      switch (esc) {
        case '\\': case "'": case '"': out += esc; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'x': out += hex(2); break;
        case 'u': out += hex(4); break;
        case 'U': out += hex(8); break;
        default: fail('unknown escape');
      }
    }
  };
  const isJson = text.trimStart().startsWith('{"');
  if (isJson) {
    // JSON object with string keys "0", "1", ...
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new ModelMetadataError(`names is not a valid object: ${(err as Error).message}`);
    }
    for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
      if (!/^\d+$/.test(k) || typeof v !== 'string') throw new ModelMetadataError(`names: entry ${JSON.stringify(k).slice(0, 32)} is not index: name`);
      byIndex.set(Number(k), v);
    }
  } else {
    expect('{');
    skipSpace();
    if (text[pos] === '}') pos++;
    else {
      for (;;) {
        skipSpace();
        const start = pos;
        while (pos < text.length && /[0-9]/.test(text[pos] as string)) pos++;
        if (pos === start || pos - start > 9) fail('expected a class index');
        const index = Number(text.slice(start, pos));
        expect(':');
        if (byIndex.has(index)) fail(`class ${index} given twice`);
        byIndex.set(index, readString());
        skipSpace();
        if (text[pos] === ',') {
          pos++;
          skipSpace();
          if (text[pos] === '}') {
            pos++;
            break;
          }
          continue;
        }
        expect('}');
        break;
      }
    }
    skipSpace();
    if (pos !== text.length) fail('text after the closing brace');
  }
  const names: string[] = [];
  for (let i = 0; i < byIndex.size; i++) {
    const name = byIndex.get(i);
    if (name === undefined) throw new ModelMetadataError(`names: ${byIndex.size} classes, but class ${i} is missing (indices must be 0..${byIndex.size - 1})`);
    names.push(name);
  }
  return names;
}

/** Ultralytics' `imgsz` ('[640, 640]': height, width; or one number for a square) and `stride` ('32'), where present. */
export function sizeHintsOf(props: ReadonlyMap<string, string>): { height: number; width: number; stride?: number } | undefined {
  const imgsz = props.get('imgsz');
  if (imgsz === undefined) return undefined;
  const numbers = imgsz.match(/\d+/g)?.map(Number) ?? [];
  const [h, w] = numbers.length === 1 ? [numbers[0], numbers[0]] : numbers;
  if (h === undefined || w === undefined || numbers.length > 2 || !(h > 0 && w > 0)) return undefined;
  const stride = Number(props.get('stride'));
  return { height: h, width: w, ...(Number.isInteger(stride) && stride > 0 && { stride }) };
}
