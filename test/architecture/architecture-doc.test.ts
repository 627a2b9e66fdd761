import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import t from 'tap';

/**
 * docs/ARCHITECTURE.md is the map: every file it names exists, and every function, class or method it names at a
 * hop (written `src/path.ts:name` or `src/path.ts:Class.method`) is declared in that file. Under 200 lines.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const DOC = resolve(ROOT, 'docs/ARCHITECTURE.md');

export interface Reference {
  path: string;
  symbol?: string;
}

/** The `src/...` (and `test/...`) references of a Markdown text, with the symbol after a colon where one is named. */
export function referencesOf(markdown: string): Reference[] {
  const refs: Reference[] = [];
  for (const m of markdown.matchAll(/`((?:src|test|scripts)\/[\w./-]+?)(?::([\w.]+))?`/g)) {
    refs.push({ path: m[1] as string, ...(m[2] !== undefined && { symbol: m[2] }) });
  }
  return refs;
}

/** Whether `source` declares `symbol` (a function, class, const, type or interface; Class.method: a method of it). */
export function declares(source: string, symbol: string): boolean {
  const [owner, member] = symbol.split('.') as [string, string | undefined];
  const declared = new RegExp(`\\b(?:function\\*?|class|const|let|interface|type|enum)\\s+${owner}\\b`).test(source);
  if (member === undefined) return declared;
  // A method or property of the class or interface: `name(`, `async name(`, `get name(`, `name =` or `name:` inside it.
  const body = source.slice(source.search(new RegExp(`\\b(?:class|interface)\\s+${owner}\\b`)));
  return declared && new RegExp(`^\\s*(?:(?:public|private|protected|readonly|static|async|get|set)\\s+)*${member}\\s*[(<=:?]`, 'm').test(body);
}

t.test('the reference reader finds paths and symbols', async (t) => {
  t.same(referencesOf('see `src/a/b.ts` and `src/c.ts:run`, `src/d.ts:Stage.close`, not `npm test`'), [
    { path: 'src/a/b.ts' },
    { path: 'src/c.ts', symbol: 'run' },
    { path: 'src/d.ts', symbol: 'Stage.close' },
  ]);
  t.ok(declares('export async function run(x) {}', 'run'));
  t.ok(declares('export class Stage {\n  async close(): Promise<void> {}\n}', 'Stage.close'));
  t.notOk(declares('export class Stage {\n  async open(): Promise<void> {}\n}', 'Stage.close'));
  t.notOk(declares('const running = 1;', 'run'));
});

t.test('docs/ARCHITECTURE.md names only files and functions that exist', async (t) => {
  const text = readFileSync(DOC, 'utf8');
  t.ok(text.split('\n').length < 200, `under 200 lines (${text.split('\n').length})`);
  const refs = referencesOf(text);
  t.ok(refs.filter((r) => r.symbol !== undefined).length >= 20, `names at least 20 functions at the hops (${refs.length} references)`);
  for (const ref of refs) {
    const file = resolve(ROOT, ref.path);
    if (!existsSync(file)) {
      t.fail(`${ref.path} does not exist`);
      continue;
    }
    if (ref.symbol !== undefined) t.ok(declares(readFileSync(file, 'utf8'), ref.symbol), `${ref.path} declares ${ref.symbol}`);
  }
});
