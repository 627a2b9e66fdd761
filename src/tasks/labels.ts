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
