import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';

/**
 * The import rule of docs/ARCHITECTURE.md, checked on every file of src/: dependencies run one way,
 *   entry (main.ts -> app.ts) -> routes, protocols -> http -> plugins -> tasks -> core -> config -> errors.ts,
 * counting static and dynamic imports, `export ... from`, type-only imports, and the module URLs handed to
 * `new Worker(...)` and `fork(...)` (written `new URL('./module' + ext, import.meta.url)`). Folders of one rank do not
 * import each other, and the graph of top-level folders has no cycle. core/ imports neither Fastify nor prom-client.
 */

const SRC = resolve(import.meta.dirname, '../../src');

/** Rank of each top-level part of src/: a file may import its own part or a part of a higher rank only. */
export const LAYERS: Record<string, number> = {
  'main.ts': 0,
  'app.ts': 1,
  routes: 2,
  protocols: 2,
  http: 3,
  plugins: 4,
  tasks: 5,
  core: 6,
  config: 7,
  'errors.ts': 8,
};

/** Packages that make code framework-bound: core stays free of them. */
const FRAMEWORK_PACKAGES = [/^fastify$/, /^@fastify\//, /^fastify-/, /^prom-client$/];

export interface Edge {
  from: string;
  to: string;
  spec: string;
}

/** Relative specifiers of a module's imports, exports-from, dynamic imports and worker/child module URLs. */
export function specifiersOf(source: string): string[] {
  const specs: string[] = [];
  const patterns = [
    /(?:^|\n)\s*(?:import|export)\s[^;]*?\sfrom\s*['"]([^'"]+)['"]/g,
    /(?:^|\n)\s*import\s*['"]([^'"]+)['"]/g,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\bnew URL\(\s*['"]([^'"]+)['"]/g,
  ];
  for (const re of patterns) for (const m of source.matchAll(re)) specs.push(m[1] as string);
  return specs;
}

/** The top-level part of src/ a path (relative to src/) belongs to. */
export function partOf(path: string): string {
  return path.split('/')[0] as string;
}

/** Resolves a relative specifier to a path relative to src/ (a module URL may have no extension). */
function resolveSpec(fromFile: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = resolve(dirname(join(SRC, fromFile)), spec);
  for (const candidate of [base.replace(/\.js$/, '.ts'), `${base}.ts`, base]) {
    if (existsSync(candidate) && statSync(candidate).isFile()) return relative(SRC, candidate);
  }
  return relative(SRC, base.replace(/\.js$/, '.ts'));
}

function sourceFiles(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) sourceFiles(path, out);
    else if (name.endsWith('.ts')) out.push(relative(SRC, path));
  }
  return out;
}

/** Every import against the direction, or between two parts of one rank; an unknown part is a violation too. */
export function violationsOf(edges: Edge[], layers: Record<string, number>): string[] {
  const found: string[] = [];
  for (const e of edges) {
    const from = partOf(e.from);
    const to = partOf(e.to);
    if (from === to) continue;
    const rf = layers[from];
    const rt = layers[to];
    if (rf === undefined || rt === undefined) found.push(`${e.from} -> ${e.spec}: ${rf === undefined ? from : to} has no layer`);
    else if (rt < rf) found.push(`${e.from} -> ${e.spec}: ${from} (layer ${rf}) imports ${to} (layer ${rt}), against the direction`);
    else if (rt === rf) found.push(`${e.from} -> ${e.spec}: ${from} and ${to} share layer ${rf} and must not import each other`);
  }
  return found;
}

/** A cycle in the graph of top-level parts, as a path, or undefined. */
export function cycleOf(edges: Edge[]): string[] | undefined {
  const graph = new Map<string, Set<string>>();
  for (const e of edges) {
    const from = partOf(e.from);
    const to = partOf(e.to);
    if (from === to) continue;
    if (!graph.has(from)) graph.set(from, new Set());
    graph.get(from)?.add(to);
  }
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (node: string): string[] | undefined => {
    if (state.get(node) === 'done') return undefined;
    if (state.get(node) === 'open') return [...path.slice(path.indexOf(node)), node];
    state.set(node, 'open');
    path.push(node);
    for (const next of graph.get(node) ?? []) {
      const cycle = visit(next);
      if (cycle !== undefined) return cycle;
    }
    path.pop();
    state.set(node, 'done');
    return undefined;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle !== undefined) return cycle;
  }
  return undefined;
}

const files = sourceFiles(SRC);
const edges: Edge[] = [];
const packages: { file: string; spec: string }[] = [];
for (const file of files) {
  for (const spec of specifiersOf(readFileSync(join(SRC, file), 'utf8'))) {
    const to = resolveSpec(file, spec);
    if (to !== undefined) edges.push({ from: file, to, spec });
    else packages.push({ file, spec });
  }
}

t.test('the checker reads every kind of dependency', async (t) => {
  const source = [
    "import type { A } from '../core/a.js';",
    "import {\n  b,\n  c,\n} from './b.js';",
    "export { d } from '../tasks/d.js';",
    "import './side-effect.js';",
    "const m = await import('../plugins/m.js');",
    "const WORKER_URL = new URL('./worker' + extname(fileURLToPath(import.meta.url)), import.meta.url);",
  ].join('\n');
  t.same(specifiersOf(source).sort(), ['../core/a.js', './b.js', '../tasks/d.js', './side-effect.js', '../plugins/m.js', './worker'].sort());
});

t.test('the checker catches an import against the direction, between equals, and a cycle', async (t) => {
  const bad: Edge[] = [
    { from: 'core/registry.ts', to: 'tasks/index.ts', spec: '../tasks/index.js' },
    { from: 'routes/predict.ts', to: 'protocols/oip/rest.ts', spec: '../protocols/oip/rest.js' },
  ];
  const v = violationsOf(bad, LAYERS);
  t.equal(v.length, 2);
  t.match(v[0], /core \(layer 6\) imports tasks \(layer 5\)/);
  t.match(v[1], /share layer 2/);
  t.same(cycleOf([...bad, { from: 'tasks/a.ts', to: 'core/b.ts', spec: '' }]), ['core', 'tasks', 'core']);
  t.equal(cycleOf([{ from: 'tasks/a.ts', to: 'core/b.ts', spec: '' }]), undefined);
});

t.test('src/ imports run one way: entry -> routes, protocols -> http -> plugins -> tasks -> core -> config -> errors', async (t) => {
  t.ok(files.length > 40, `read ${files.length} files`);
  t.ok(edges.some((e) => e.spec.includes('worker') && e.from.startsWith('core/runner/')), 'worker module URLs are counted');
  for (const part of new Set(files.map(partOf))) t.ok(part in LAYERS, `${part} has a layer`);
  t.same(violationsOf(edges, LAYERS), []);
  t.equal(cycleOf(edges), undefined, 'no cycle between the top-level folders of src/');
});

t.test('core imports neither Fastify nor prom-client', async (t) => {
  const bound = packages.filter((p) => partOf(p.file) === 'core' && FRAMEWORK_PACKAGES.some((re) => re.test(p.spec)));
  t.same(bound, []);
});
