/**
 * The project's Dockerfile rules (hadolint cannot be installed here): dockerfile-utils' own validation plus the
 * mistakes users judge container files by. `lintDockerfile` returns one message per violation; the test runs it on
 * docker/Dockerfile and on deliberately broken copies of it.
 */
import { DockerfileParser, type Instruction } from 'dockerfile-ast';
import { validate, ValidationSeverity } from 'dockerfile-utils';

export interface RuleContext {
  /** The readiness path the HEALTHCHECK must probe (from the server's routes). */
  readinessPath: string;
  /** The port the server listens on by default (from its config). */
  port: number;
  /** The gRPC port the server listens on by default (from its config; 0: none). */
  grpcPort?: number;
}

interface Stage {
  name: string;
  /** The FROM argument as written: `${NODE_IMAGE}` or an earlier stage's name. */
  from: string;
  instructions: Instruction[];
}

const DEPENDENCY_FILES = new Set(['package.json', 'package-lock.json']);
/** Any path that would bring weights or a manifest of local models into an image. */
const MODEL_PATH = /\.onnx\b|(^|\/)models?(\/|$)|models\.manifest\.json|@gutenye|ocr-models/;

export function lintDockerfile(text: string, ctx: RuleContext): string[] {
  const problems: string[] = [];
  const fail = (msg: string) => problems.push(msg);

  for (const d of validate(text)) {
    if (d.severity === ValidationSeverity.ERROR) fail(`dockerfile-utils: line ${d.range.start.line + 1}: ${d.message}`);
  }
  if (/^#\s*syntax\s*=/im.test(text)) fail('a `# syntax=` line makes BuildKit pull a frontend image: not allowed');
  if (/<<-?\s*['"]?[A-Z_]+['"]?\s*$/m.test(text)) fail('heredocs are not supported by Docker 20.10\'s built-in frontend');

  const dockerfile = DockerfileParser.parse(text);
  const globalArgs = new Map<string, string>();
  for (const arg of dockerfile.getInitialARGs()) {
    const p = arg.getProperty();
    if (p !== null) globalArgs.set(p.getName(), p.getValue() ?? '');
  }

  // Stages in order, each with its instructions.
  const stages: Stage[] = [];
  for (const ins of dockerfile.getInstructions()) {
    const kw = ins.getKeyword();
    if (kw === 'FROM') {
      const args = (ins.getArgumentsContent() ?? '').split(/\s+/).filter((a) => !a.startsWith('--'));
      const asIndex = args.findIndex((a) => a.toUpperCase() === 'AS');
      stages.push({ name: asIndex >= 0 ? (args[asIndex + 1] ?? '') : '', from: args[0] ?? '', instructions: [] });
    } else {
      stages.at(-1)?.instructions.push(ins);
    }
  }
  const byName = new Map(stages.map((s) => [s.name, s]));

  /** The image a stage finally starts from, following stage aliases and ARG defaults. */
  const baseImage = (stage: Stage, depth = 0): string => {
    if (depth > stages.length) return stage.from;
    const parent = byName.get(stage.from);
    if (parent !== undefined) return baseImage(parent, depth + 1);
    const m = /^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$/.exec(stage.from);
    return m?.[1] !== undefined ? (globalArgs.get(m[1]) ?? '') : stage.from;
  };
  const chain = (stage: Stage): Stage[] => {
    const out: Stage[] = [stage];
    let s = byName.get(stage.from);
    while (s !== undefined && out.length <= stages.length) {
      out.push(s);
      s = byName.get(s.from);
    }
    return out;
  };
  // The whole instruction after its keyword, flags included (getArgumentsContent() drops --mount, --from, ...).
  const lines = text.split('\n');
  const args = (ins: Instruction) => {
    const r = ins.getRange();
    return lines
      .slice(r.start.line, r.end.line + 1)
      .join('\n')
      .replace(/^\s*\S+\s*/, '')
      .replace(/\\\n/g, ' ');
  };
  const runs = (s: Stage) => s.instructions.filter((i) => i.getKeyword() === 'RUN').map(args);

  // Base images: every FROM is a build argument with a pinned upstream default, or an earlier stage.
  for (const s of stages) {
    if (byName.get(s.from) !== undefined && stages.indexOf(byName.get(s.from) as Stage) < stages.indexOf(s)) continue;
    const m = /^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$/.exec(s.from);
    if (m?.[1] === undefined) {
      fail(`stage ${s.name}: FROM ${s.from} is neither a build argument nor an earlier stage`);
      continue;
    }
    const image = globalArgs.get(m[1]);
    if (image === undefined || image === '') {
      fail(`stage ${s.name}: build argument ${m[1]} has no default (the real upstream image)`);
      continue;
    }
    const tag = /:([^/@]+)$/.exec(image.replace(/@sha256:[a-f0-9]+$/, ''))?.[1];
    if (!image.includes('@sha256:') && (tag === undefined || tag === 'latest' || !/\d/.test(tag))) {
      fail(`${m[1]}=${image}: base image tags must be pinned to a version`);
    }
  }
  const nodeImage = globalArgs.get('NODE_IMAGE') ?? '';
  if (!/^node:(24|26)(\.\d+){0,2}-bookworm-slim$/.test(nodeImage)) {
    fail(`NODE_IMAGE=${nodeImage}: must be the official node:<24|26>[.x.y]-bookworm-slim image (glibc, a supported LTS)`);
  }
  const cudaImage = globalArgs.get('CUDA_IMAGE') ?? '';
  if (!/^nvidia\/cuda:12\.\d+(\.\d+)?-cudnn-runtime-/.test(cudaImage)) {
    fail(`CUDA_IMAGE=${cudaImage}: must be an nvidia/cuda:12.x-cudnn-runtime-* image (CUDA 12, cuDNN 9, runtime)`);
  }

  // apt: no recommended packages, ever.
  for (const s of stages) {
    for (const run of runs(s)) {
      for (const m of run.matchAll(/apt(?:-get)?\s+install\b([^;&|]*)/g)) {
        if (!(m[1] ?? '').includes('--no-install-recommends')) fail(`stage ${s.name}: apt-get install without --no-install-recommends`);
      }
    }
  }

  // No weights or model manifests copied into any stage.
  for (const s of stages) {
    for (const ins of s.instructions) {
      const kw = ins.getKeyword();
      if (kw !== 'COPY' && kw !== 'ADD') continue;
      const parts = args(ins).split(/\s+/).filter((a) => !a.startsWith('--'));
      for (const src of parts.slice(0, -1)) {
        if (MODEL_PATH.test(src) || src === '.' || src === './') fail(`stage ${s.name}: ${kw} ${src} could bring models into the image`);
      }
    }
  }

  // Dependency files before sources, in every stage that installs dependencies.
  let installStages = 0;
  for (const s of stages) {
    const npmCi = s.instructions.findIndex((i) => i.getKeyword() === 'RUN' && /\bnpm ci\b/.test(args(i)));
    if (npmCi < 0) continue;
    installStages++;
    const run = args(s.instructions[npmCi] as Instruction);
    if (!/--mount=type=secret,id=npm_ca\b/.test(run) || !/if \[ -s \/run\/secrets\/npm_ca \]/.test(run)) {
      fail(`stage ${s.name}: npm ci must take the optional npm_ca build secret, used only when present`);
    }
    for (const ins of s.instructions.slice(0, npmCi)) {
      if (ins.getKeyword() !== 'COPY' && ins.getKeyword() !== 'ADD') continue;
      const parts = args(ins).split(/\s+/).filter((a) => !a.startsWith('--'));
      const extra = parts.slice(0, -1).filter((p) => !DEPENDENCY_FILES.has(p));
      if (extra.length > 0) fail(`stage ${s.name}: ${extra.join(', ')} copied before npm ci (only the dependency files may be)`);
    }
  }
  if (installStages === 0) fail('no stage runs npm ci');

  // onnxruntime-node's CUDA provider: ORT_NODE_INSTALL, default cuda12, passed to its install script.
  const ortArg = stages.flatMap((s) => s.instructions).find((i) => i.getKeyword() === 'ARG' && /^ORT_NODE_INSTALL=/.test(args(i)));
  if (ortArg === undefined || args(ortArg) !== 'ORT_NODE_INSTALL=cuda12') fail('ARG ORT_NODE_INSTALL=cuda12 missing');
  if (!/ONNXRUNTIME_NODE_INSTALL="?\$\{?ORT_NODE_INSTALL/.test(text)) fail('ORT_NODE_INSTALL is not passed to onnxruntime-node\'s install');

  // The runtime stages.
  for (const name of ['runtime-gpu', 'runtime-cpu']) {
    const s = byName.get(name);
    if (s === undefined) {
      fail(`no ${name} stage`);
      continue;
    }
    const base = baseImage(s);
    for (const st of chain(s)) {
      const b = byName.get(st.from) === undefined ? baseImage(st) : '';
      if (/devel/i.test(b)) fail(`${name}: starts from a devel image (${b})`);
    }
    if (name === 'runtime-gpu' && !/^nvidia\/cuda:.*-cudnn-runtime-/.test(base)) fail(`runtime-gpu: base ${base} is not a CUDA cudnn-runtime image`);
    if (name === 'runtime-cpu' && !/^node:[\d.]+-bookworm-slim$/.test(base)) fail(`runtime-cpu: base ${base} is not node:<major>-bookworm-slim`);

    const own = (kw: string) => s.instructions.filter((i) => i.getKeyword() === kw);
    const user = own('USER').at(-1);
    const who = user === undefined ? 'root' : args(user).split(':')[0];
    if (who === undefined || who === 'root' || who === '0' || !/^\d+$/.test(who)) {
      fail(`${name}: must end as a non-root USER with a fixed numeric uid (has ${user === undefined ? 'none' : args(user)})`);
    }
    const hc = own('HEALTHCHECK').at(-1);
    if (hc === undefined) fail(`${name}: no HEALTHCHECK`);
    else {
      const hcText = args(hc);
      if (!/\bCMD\s+\[/.test(hcText)) fail(`${name}: HEALTHCHECK must use exec form (no shell, no curl)`);
      if (!hcText.includes(`'${ctx.readinessPath}'`)) fail(`${name}: HEALTHCHECK does not probe the readiness route ${ctx.readinessPath}`);
      if (/\bcurl\b|\bwget\b/.test(hcText)) fail(`${name}: HEALTHCHECK must not need curl or wget`);
      const start = /--start-period=(\d+)s/.exec(hcText)?.[1];
      if (start === undefined || Number(start) < 60) fail(`${name}: HEALTHCHECK start period must cover model loading (>= 60s)`);
    }
    const cmd = own('CMD').at(-1);
    if (cmd === undefined || !args(cmd).trim().startsWith('[')) fail(`${name}: CMD must be in exec form`);
    const entry = own('ENTRYPOINT').at(-1);
    if (entry === undefined || !/^\[\s*"[^"]*tini"/.test(args(entry))) fail(`${name}: ENTRYPOINT must run tini as PID 1 (exec form)`);
    const exposed = own('EXPOSE').flatMap((i) => args(i).split(/\s+/));
    if (!exposed.some((p) => p.replace(/\/tcp$/, '') === String(ctx.port))) fail(`${name}: does not EXPOSE the server's port ${ctx.port}`);
    if (ctx.grpcPort !== undefined && ctx.grpcPort !== 0 && !exposed.some((p) => p.replace(/\/tcp$/, '') === String(ctx.grpcPort))) {
      fail(`${name}: does not EXPOSE the server's gRPC port ${ctx.grpcPort}`);
    }
    const env = own('ENV').map(args).join(' ');
    if (!/OCULAR_MANIFEST=\/models\/models\.manifest\.json/.test(env)) fail(`${name}: OCULAR_MANIFEST must default to the mounted /models/models.manifest.json`);
    if (name === 'runtime-gpu') {
      for (const v of ['NVIDIA_VISIBLE_DEVICES', 'NVIDIA_DRIVER_CAPABILITIES']) if (!env.includes(`${v}=`)) fail(`runtime-gpu: ENV ${v} missing`);
    }
    // node_modules only from a production-only install.
    for (const copy of own('COPY')) {
      const from = /--from=(\S+)/.exec(args(copy))?.[1];
      if (from === undefined || !/node_modules/.test(args(copy))) continue;
      const src = byName.get(from);
      if (src === undefined || !chain(src).some((c) => runs(c).some((r) => /npm ci\b.*--omit=dev/.test(r)))) {
        fail(`${name}: node_modules copied from ${from}, which is not a production-only install (npm ci --omit=dev)`);
      }
    }
    if (own('RUN').some((i) => /npm (ci|install)\b/.test(args(i)))) fail(`${name}: installs dependencies in the runtime stage`);
  }
  return problems;
}

/** .dockerignore must keep dependencies, tests, models and history out of the build context. */
export function lintDockerignore(text: string): string[] {
  const lines = new Set(text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')));
  return ['node_modules', 'test', 'models', '.git', '**/*.onnx', 'dist']
    .filter((p) => !lines.has(p))
    .map((p) => `.dockerignore does not exclude ${p}`);
}
