import { existsSync, readdirSync, readFileSync } from 'node:fs';
import t from 'tap';
import { readYaml, repoPath } from './server-facts.js';

interface Step {
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
}
interface Workflow {
  name?: string;
  on?: unknown;
  jobs?: Record<string, { 'runs-on'?: unknown; steps?: Step[]; strategy?: { matrix?: Record<string, unknown> } }>;
}

const dir = repoPath('.github', 'workflows');
const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { scripts: Record<string, string>; engines?: { node?: string } };

/** Problems with one workflow: structure, and every script, npm script and file it names must exist. */
function workflowProblems(wf: Workflow, name: string): string[] {
  const problems: string[] = [];
  if (typeof wf.name !== 'string') problems.push(`${name}: no name`);
  if (wf.on === undefined) problems.push(`${name}: no trigger (on)`);
  for (const [jobName, job] of Object.entries(wf.jobs ?? {})) {
    if (job['runs-on'] === undefined) problems.push(`${name} ${jobName}: no runs-on`);
    if (!Array.isArray(job.steps) || job.steps.length === 0) problems.push(`${name} ${jobName}: no steps`);
    for (const step of job.steps ?? []) {
      if ((step.uses === undefined) === (step.run === undefined)) problems.push(`${name} ${jobName}: a step needs exactly one of uses and run`);
      if (step.uses !== undefined && !/^[\w.-]+\/[\w.-]+(\/[\w./-]+)?@v\d+$/.test(step.uses)) problems.push(`${name}: ${step.uses} is not pinned to a major version`);
      for (const m of (step.run ?? '').matchAll(/\bnpm (?:run|run-script) ([\w:-]+)/g)) {
        if (pkg.scripts[m[1] ?? ''] === undefined) problems.push(`${name}: npm run ${m[1]} is not a package.json script`);
      }
      for (const m of (step.run ?? '').matchAll(/\b(?:bash|sh|node|npx tsx)\s+((?:\.{0,2}\/)?[\w./-]+\.(?:sh|js|ts|mjs))/g)) {
        if (!existsSync(repoPath(m[1] ?? ''))) problems.push(`${name}: ${m[1]} does not exist`);
      }
      for (const key of ['file', 'context', 'cache-dependency-path']) {
        const v = step.with?.[key];
        if (typeof v === 'string' && !v.includes('${{') && !existsSync(repoPath(v))) problems.push(`${name}: ${key}: ${v} does not exist`);
      }
    }
  }
  return problems;
}

t.test('workflows parse and reference only what exists', async (t) => {
  t.ok(files.includes('ci.yml') && files.includes('image.yml'), 'ci.yml and image.yml are present');
  for (const f of files) {
    const wf = readYaml<Workflow>(readFileSync(repoPath('.github', 'workflows', f), 'utf8'));
    t.same(workflowProblems(wf, f), [], `${f}: well-formed, every referenced script and file exists`);
  }
  const broken: Workflow = { name: 'x', on: 'push', jobs: { a: { 'runs-on': 'ubuntu-24.04', steps: [{ run: 'npm run no-such-script && bash scripts/ci/gone.sh' }, { uses: 'docker/build-push-action@v6', with: { file: 'docker/Nope' } }] } } };
  const problems = workflowProblems(broken, 'broken.yml');
  t.equal(problems.length, 3, 'deliberate breaks (a missing npm script, script file and Dockerfile) are caught', { problems });
});

t.test('the dependency audit runs in the GitHub workflow and in .ci/run, and exit 3 (not run) is never a pass', async (t) => {
  const ci = readYaml<Workflow>(readFileSync(repoPath('.github', 'workflows', 'ci.yml'), 'utf8'));
  const auditSteps = Object.values(ci.jobs ?? {}).flatMap((j) => j.steps ?? []).filter((s) => (s.run ?? '').includes('npm run audit:prod'));
  t.equal(auditSteps.length, 1, 'ci.yml runs npm run audit:prod');
  t.match(auditSteps[0]?.run ?? '', /"\$status" -eq 3[\s\S]*::warning::/, 'exit 3 is reported as a warning');
  t.match(pkg.scripts['audit:prod'] ?? '', /scripts\/audit-check\.ts/);
  t.match(readFileSync(repoPath('.ci', 'run'), 'utf8'), /npx tsx scripts\/audit-check\.ts/, '.ci/run runs it too');
});

t.test('CI tests the supported LTS majors; images build both targets with a cache', async (t) => {
  const ci = readYaml<Workflow>(readFileSync(repoPath('.github', 'workflows', 'ci.yml'), 'utf8'));
  const steps = ci.jobs?.['test']?.steps ?? [];
  const runs = steps.map((s) => s.run ?? '').join('\n');
  for (const cmd of ['npm ci', 'npm run lint', 'npm run typecheck', 'npm test']) t.ok(runs.includes(cmd), `ci runs ${cmd}`);
  const majors = (ci.jobs?.['test']?.strategy?.matrix?.['node'] ?? []) as number[];
  const floor = Number(/(\d+)/.exec(pkg.engines?.node ?? '')?.[1] ?? 0);
  t.ok(majors.length > 0 && majors.every((m) => m % 2 === 0 && m >= floor), `Node ${majors.join(', ')}: even (LTS) majors within engines`);
  t.ok(majors.includes(24), 'the Node major the images ship (24) is tested');

  const image = readYaml<Workflow>(readFileSync(repoPath('.github', 'workflows', 'image.yml'), 'utf8'));
  const job = Object.values(image.jobs ?? {})[0];
  const include = (job?.strategy?.matrix?.['include'] ?? []) as { target: string }[];
  t.same(include.map((i) => i.target).sort(), ['runtime-cpu', 'runtime-gpu'], 'both targets are built');
  const build = job?.steps?.find((s) => s.uses?.startsWith('docker/build-push-action@'));
  t.ok(String(build?.with?.['cache-from']).startsWith('type=gha'), 'with a build cache (from)');
  t.ok(String(build?.with?.['cache-to']).startsWith('type=gha'), 'with a build cache (to)');
  t.equal(build?.with?.['file'], 'docker/Dockerfile', 'from docker/Dockerfile');
});
