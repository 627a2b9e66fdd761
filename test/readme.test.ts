/**
 * The README's examples, run (issue #23): every `curl` in its ```sh blocks is sent to a started server, and the
 * output shown under it (the `# ` lines) is compared with the answer in shape and in its stable values: the same
 * keys (`...` stands for keys or elements left out, and a string ending in `...` for the rest of the string),
 * the same labels and texts, numbers to the digits shown. Blocks marked `<!-- readme-test: zoo -->` run against
 * the manifest of `models:prepare -- --zoo` (prepared offline from $OCULAR_SHARED_DIR/models, the same files by
 * sha256), the others against the default manifest. Blocks marked `not-run` (Docker, a cluster) and `setup` (what
 * this test does itself: install, start, prepare) are listed, not run.
 *
 * Also: the README's lines fit 120 columns (table rows aside), its relative links exist, and the quickstart's
 * curl reaches a model of the default manifest with a file that is in the repository.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { freePort, startServer, type ChildServer } from './helpers/server.js';
import { projectRoot, sharedPath, sharedTestOptions } from './helpers/shared.js';

t.setTimeout(600_000);

const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8');
const run = promisify(execFile);

export interface Example {
  /** The command as written (continuation lines joined). */
  command: string;
  /** The output shown under it, `# ` prefixes removed and lines joined; empty when none is shown. */
  shown: string;
  line: number;
}

export interface Block {
  kind: 'default' | 'zoo' | 'not-run' | 'setup';
  reason: string;
  line: number;
  text: string;
  examples: Example[];
}

/** The ```sh blocks of a markdown text, each with its marker and its curl commands and shown outputs. */
export function readmeBlocks(markdown: string): Block[] {
  const lines = markdown.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== '```sh') continue;
    const marker = /^<!-- readme-test: (zoo|not-run|setup)(?: \((.*)\))? -->$/.exec(lines[i - 1] ?? '');
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && lines[j] !== '```'; j++) body.push(lines[j] ?? '');
    const examples: Example[] = [];
    for (let k = 0; k < body.length; k++) {
      const text = body[k] ?? '';
      if (!text.startsWith('curl ')) continue;
      const start = k;
      let command = text;
      while (command.endsWith('\\') && k + 1 < body.length) command = `${command.slice(0, -1).trimEnd()} ${(body[++k] ?? '').trim()}`;
      const shown: string[] = [];
      while (k + 1 < body.length && (body[k + 1] ?? '').startsWith('#')) shown.push((body[++k] ?? '').replace(/^#\s*/, ''));
      examples.push({ command, shown: shown.join(''), line: i + 2 + start });
    }
    blocks.push({
      kind: (marker?.[1] as Block['kind'] | undefined) ?? 'default',
      reason: marker?.[2] ?? '',
      line: i + 1,
      text: body.join('\n'),
      examples,
    });
    i = j;
  }
  return blocks;
}

const MORE = '__readme_more__';
const NUMBER = '__readme_number__:';

/**
 * The shown output as JSON: `...` outside strings becomes a marker (an element in an array, a key in an object),
 * and numbers become strings that keep their digits, so `0.36` means "0.36 to two decimals".
 */
export function parseShown(text: string): unknown {
  let out = '';
  const stack: string[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === '"') {
      const end = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i));
      if (end === null) throw new Error(`an unterminated string at ${i}`);
      out += end[0];
      i += end[0].length - 1;
    } else if (text.startsWith('...', i)) {
      out += stack.at(-1) === '{' ? `"${MORE}":true` : `"${MORE}"`;
      i += 2;
    } else if (/[-\d]/.test(c)) {
      const num = /^-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?/.exec(text.slice(i))?.[0] ?? c;
      out += JSON.stringify(`${NUMBER}${num}`);
      i += num.length - 1;
    } else {
      if (c === '{' || c === '[') stack.push(c);
      if (c === '}' || c === ']') stack.pop();
      out += c;
    }
  }
  return JSON.parse(out) as unknown;
}

/** Where `actual` differs from the shown value (parsed by parseShown), as paths and reasons; empty when it fits. */
export function differences(shown: unknown, actual: unknown, path = '$'): string[] {
  if (typeof shown === 'string' && shown.startsWith(NUMBER)) {
    const digits = shown.slice(NUMBER.length);
    const decimals = digits.split('.')[1]?.length ?? 0;
    if (typeof actual !== 'number') return [`${path}: a number was shown, got ${JSON.stringify(actual)}`];
    return actual.toFixed(decimals) === Number(digits).toFixed(decimals) ? [] : [`${path}: ${digits} shown, got ${actual}`];
  }
  if (typeof shown === 'string') {
    if (typeof actual !== 'string') return [`${path}: a string was shown, got ${JSON.stringify(actual)}`];
    const fits = shown.endsWith('...') ? actual.startsWith(shown.slice(0, -3)) : actual === shown;
    return fits ? [] : [`${path}: ${JSON.stringify(shown)} shown, got ${JSON.stringify(actual)}`];
  }
  if (Array.isArray(shown)) {
    if (!Array.isArray(actual)) return [`${path}: an array was shown`];
    const more = shown.at(-1) === MORE;
    const items = more ? shown.slice(0, -1) : shown;
    if (more ? actual.length < items.length : actual.length !== items.length) {
      return [`${path}: ${items.length}${more ? ' or more' : ''} elements shown, got ${actual.length}`];
    }
    return items.flatMap((item, i) => differences(item, actual[i], `${path}[${i}]`));
  }
  if (typeof shown === 'object' && shown !== null) {
    if (typeof actual !== 'object' || actual === null || Array.isArray(actual)) return [`${path}: an object was shown`];
    const s = shown as Record<string, unknown>;
    const a = actual as Record<string, unknown>;
    const problems = Object.keys(s)
      .filter((k) => k !== MORE)
      .flatMap((k) => (k in a ? differences(s[k], a[k], `${path}.${k}`) : [`${path}.${k}: missing`]));
    if (!(MORE in s)) problems.push(...Object.keys(a).filter((k) => !(k in s)).map((k) => `${path}.${k}: not shown`));
    return problems;
  }
  return shown === actual ? [] : [`${path}: ${JSON.stringify(shown)} shown, got ${JSON.stringify(actual)}`];
}

t.test('the comparison of shown outputs', async (t) => {
  const shown = parseShown('{"a":0.36,"b":[{"t":"NO",...},...],"m":"the body is ..."}');
  t.same(differences(shown, { a: 0.3633, b: [{ t: 'NO', x: 1 }, { t: 'P' }], m: 'the body is not' }), []);
  t.match(differences(shown, { a: 0.3733, b: [{ t: 'NO' }], m: 'the body is' })[0], /\$\.a: 0\.36 shown, got 0\.3733/);
  t.match(differences(parseShown('{"a":1}'), { a: 1, b: 2 }), ['$.b: not shown']);
  t.match(differences(parseShown('[1,2]'), [1]), ['$: 2 elements shown, got 1']);
  t.match(differences(parseShown('{"l":"cat"}'), { l: 'dog' }), ['$.l: "cat" shown, got "dog"']);
});

const blocks = readmeBlocks(readme);

t.test('the README is a path a person can follow', async (t) => {
  const long = readme.split('\n').map((l, i) => ({ l, n: i + 1 })).filter(({ l }) => l.length > 120 && !l.startsWith('|'));
  t.same(long.map(({ n }) => n), [], 'lines (table rows aside) fit 120 columns');
  const headings = readme.split('\n').filter((l) => l.startsWith('## ')).map((l) => l.slice(3));
  const path = ['Quickstart', 'Requirements', 'Playground', 'The API', 'Your own model', 'Compose', 'Kubernetes and GPUs', 'Configuration', 'Errors', 'More'];
  const at = path.map((h) => headings.indexOf(h));
  t.ok(at.every((i) => i >= 0), `the sections of the path: ${path.join(' -> ')} (${at.join(', ')})`);
  t.same([...at].sort((a, b) => a - b), at, 'in that order');
  for (const [, target] of readme.matchAll(/\]\(((?!https?:|#)[^)#\s]+)(?:#[^)]*)?\)/g)) {
    t.ok(existsSync(join(projectRoot, target ?? '')), `the link ${target ?? ''} exists`);
  }
  const first = blocks.find((b) => b.kind === 'default' && b.examples.length > 0);
  const manifest = JSON.parse(readFileSync(join(projectRoot, 'models.manifest.json'), 'utf8')) as { models: { name: string }[] };
  const names = manifest.models.map((m) => m.name);
  t.ok(first !== undefined, 'a curl in the quickstart');
  for (const ex of first?.examples ?? []) {
    const model = /\/v1\/models\/([^/?' ]+)/.exec(ex.command)?.[1];
    t.ok(model !== undefined && names.includes(model), `the quickstart's curl asks a model of the default manifest (${model ?? 'none'})`);
    for (const [, file] of ex.command.matchAll(/@([\w./-]+)/g)) t.ok(existsSync(join(projectRoot, file ?? '')), `${file ?? ''} is in the repository`);
  }
  t.ok(readme.includes('22, 24 or 26'), 'the README says which Node versions are supported');
});

t.test('what the README-examples test does not run', async (t) => {
  const skipped = blocks.filter((b) => b.kind === 'not-run' || b.kind === 'setup');
  for (const b of skipped) {
    t.ok(b.reason.length > 0, `README.md:${b.line} (${b.kind}) says why`);
    t.comment(`${b.kind}, README.md:${b.line} (${b.reason}):\n${b.text.replace(/^/gm, '    ')}`);
  }
  t.ok(skipped.some((b) => b.kind === 'not-run'), 'the commands that need Docker or a cluster are marked');
});

/** Starts the server on `manifest` and resolves with its base URL once ready. */
async function serve(t: Test, manifest: string): Promise<string> {
  const port = await freePort();
  const server: ChildServer = startServer({ OCULAR_MANIFEST: manifest, PORT: String(port), HOST: '127.0.0.1', OCULAR_DEVICE: 'cpu' });
  t.teardown(server.kill);
  await server.waitFor((l) => l['msg'] === 'ready', `ready on ${manifest}`);
  return `http://127.0.0.1:${port}`;
}

async function runExamples(t: Test, base: string, examples: Example[]): Promise<void> {
  for (const ex of examples) {
    const command = ex.command.replaceAll('http://localhost:8080', base);
    const { stdout } = await run('bash', ['-c', command], { cwd: projectRoot, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 });
    if (ex.shown === '') {
      t.pass(`README.md:${ex.line} runs`);
      continue;
    }
    let actual: unknown;
    try {
      actual = JSON.parse(stdout) as unknown;
    } catch {
      t.equal(stdout.trim(), ex.shown.trim(), `README.md:${ex.line}: the output shown`);
      continue;
    }
    const problems = differences(parseShown(ex.shown), actual);
    t.same(problems, [], `README.md:${ex.line}: the answer fits the output shown (${stdout.slice(0, 160)})`);
  }
}

const MODELS = ['ppocrv4-det/model.onnx', 'mobilenetv2-12-int8/model.onnx', 'yolox-nano/model_static_b1.onnx'].map((m) => `models/${m}`);

t.test('every curl of the README answers as shown', sharedTestOptions(...MODELS), async (t) => {
  const zooDir = t.testdir();
  // The zoo manifest as models:prepare -- --zoo writes it, from the shared copies of the same files (by sha256).
  await run(process.execPath, ['--import', 'tsx', 'scripts/models-prepare.ts', '--zoo', '--from', sharedPath('models'), '--out', zooDir], {
    cwd: projectRoot,
    timeout: 120_000,
  });
  const [defaultBase, zooBase] = await Promise.all([
    serve(t, join(projectRoot, 'models.manifest.json')),
    serve(t, join(zooDir, 'models.manifest.json')),
  ]);
  const count = { default: 0, zoo: 0 };
  for (const block of blocks) {
    if (block.kind !== 'default' && block.kind !== 'zoo') continue;
    count[block.kind] += block.examples.length;
    await runExamples(t, block.kind === 'zoo' ? zooBase : defaultBase, block.examples);
  }
  t.ok(count.default > 0 && count.zoo > 0, `curls run: ${count.default} on the default manifest, ${count.zoo} on the zoo's`);
});
