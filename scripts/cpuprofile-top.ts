/**
 * Where a thread's time went, from a V8 CPU profile (`node --cpu-prof`, one `.cpuprofile` per thread): the share of
 * the sampled time that was idle (waiting for I/O), garbage collection and running code, then the functions with the
 * most self time, each with its file. Used for the overload run's profile (scripts/hardening/overload.ts
 * --cpu-prof DIR, docs/RELIABILITY.md).
 *
 *   npx tsx scripts/cpuprofile-top.ts FILE.cpuprofile [--top 25]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
const file = positionals[0];
if (file === undefined) {
  process.stderr.write('usage: npx tsx scripts/cpuprofile-top.ts FILE.cpuprofile [--top 25]\n');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));

// Each sample's time is the delta to the next one (the last sample's is not known and left out).
const selfUs = new Map<number, number>();
const samples = profile.samples ?? [];
const deltas = profile.timeDeltas ?? [];
for (let i = 0; i + 1 < samples.length; i++) {
  const id = samples[i] as number;
  selfUs.set(id, (selfUs.get(id) ?? 0) + (deltas[i + 1] ?? 0));
}
const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);

const special = (name: string) => name === '(idle)' || name === '(garbage collector)' || name === '(program)';
const byFunction = new Map<string, number>();
const categories = new Map<string, number>();
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (node === undefined) continue;
  const { functionName, url, lineNumber } = node.callFrame;
  const name = functionName === '' ? '(anonymous)' : functionName;
  const category = special(name) ? name : url.startsWith('node:') ? 'Node.js internals' : url.includes('node_modules') ? 'dependencies' : url === '' ? 'native' : 'Ocular';
  categories.set(category, (categories.get(category) ?? 0) + us);
  const where = url === '' ? '' : ` ${url.replace(/^file:\/\/.*?(node_modules|src|dist)\//, '$1/')}:${lineNumber + 1}`;
  const key = `${name}${where}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
}

const pct = (us: number) => `${((100 * us) / totalUs).toFixed(1)} %`;
const ms = (us: number) => `${(us / 1000).toFixed(0)} ms`;
const lines = [
  `${file}: ${ms(profile.endTime - profile.startTime)} profiled, ${samples.length} samples`,
  '',
  '| where the time went | time | share |',
  '| --- | ---: | ---: |',
  ...[...categories].sort((a, b) => b[1] - a[1]).map(([c, us]) => `| ${c} | ${ms(us)} | ${pct(us)} |`),
  '',
  '| function (self time) | time | share |',
  '| --- | ---: | ---: |',
  ...[...byFunction]
    .filter(([key]) => !special(key))
    .sort((a, b) => b[1] - a[1])
    .slice(0, Number(values.top))
    .map(([key, us]) => `| \`${key}\` | ${ms(us)} | ${pct(us)} |`),
];
process.stdout.write(`${lines.join('\n')}\n`);
