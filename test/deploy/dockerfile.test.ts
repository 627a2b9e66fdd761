import { readFileSync } from 'node:fs';
import t from 'tap';
import { type RuleContext, lintDockerfile, lintDockerignore } from './dockerfile-rules.js';
import { configForEnv, readServerFacts, repoPath } from './server-facts.js';
import { startOptions } from '../../scripts/lib/server.js';

const dockerfile = readFileSync(repoPath('docker', 'Dockerfile'), 'utf8');

t.test('docker/Dockerfile follows the project rules', async (t) => {
  const facts = await readServerFacts(t);
  const ctx: RuleContext = { readinessPath: facts.readinessPath, port: configForEnv({}).port };
  t.same(lintDockerfile(dockerfile, ctx), [], 'no violations');
  t.same(lintDockerignore(readFileSync(repoPath('.dockerignore'), 'utf8')), [], '.dockerignore keeps the context lean');

  // Each deliberate break must be caught, with a message about that break.
  const breaks: [string, (s: string) => string, RegExp][] = [
    ['a devel CUDA base', (s) => s.replace('-cudnn-runtime-', '-cudnn-devel-'), /devel|cudnn-runtime/],
    ['an unpinned base tag', (s) => s.replace(/node:24[\d.]*-bookworm-slim/, 'node:latest'), /pinned/],
    ['a Node major that is not a supported LTS', (s) => s.replace(/node:24/, 'node:23'), /supported LTS/],
    ['a FROM that is not a build argument', (s) => s.replace('FROM ${CUDA_IMAGE} AS runtime-gpu', 'FROM ubuntu:24.04 AS runtime-gpu'), /neither a build argument/],
    ['apt without --no-install-recommends', (s) => s.replace('install -y --no-install-recommends tini', 'install -y tini'), /no-install-recommends/],
    ['a root runtime', (s) => s.replace('USER 10001:10001', 'USER root'), /non-root/],
    ['no HEALTHCHECK', (s) => s.replace(/HEALTHCHECK [^\n]*\\\n[^\n]*\n(ENTRYPOINT[^\n]*\nCMD[^\n]*\n)$/, '$1'), /no HEALTHCHECK/],
    ['a HEALTHCHECK on liveness', (s) => s.replaceAll(`'${ctx.readinessPath}'`, "'/healthz'"), /readiness route/],
    ['a HEALTHCHECK with curl', (s) => s.replace(/CMD \["node", "-e", [^\n]*/, 'CMD curl -f http://127.0.0.1:8080/readyz'), /exec form|curl/],
    ['a shell-form CMD', (s) => s.replace('CMD ["node", "--initial-old-space-size=128", "dist/src/main.js"]', 'CMD node dist/src/main.js'), /CMD must be in exec form/],
    ['no tini', (s) => s.replace('ENTRYPOINT ["/usr/bin/tini", "--"]\nCMD ["node", "--initial-old-space-size=128", "dist/src/main.js"]\n\n', 'CMD ["node", "--initial-old-space-size=128", "dist/src/main.js"]\n\n'), /tini/],
    ['models copied in', (s) => s.replace('COPY package.json ./\nUSER', 'COPY models /models\nCOPY package.json ./\nUSER'), /models into the image/],
    ['an .onnx file added', (s) => s.replace('COPY package.json ./\nUSER', 'ADD https://example.com/m.onnx /app/\nCOPY package.json ./\nUSER'), /models into the image/],
    ['sources before npm ci', (s) => s.replace('COPY package.json package-lock.json .npmrc ./', 'COPY package.json package-lock.json .npmrc ./\nCOPY src ./src'), /copied before npm ci/],
    ['npm ci without the CA secret', (s) => s.replace('RUN --mount=type=secret,id=npm_ca --mount=type=cache', 'RUN --mount=type=cache'), /npm_ca/],
    ['dev dependencies in the runtime', (s) => s.replace('COPY --from=prod-deps /app/node_modules', 'COPY --from=deps /app/node_modules'), /production-only/],
    ['no NVIDIA_DRIVER_CAPABILITIES', (s) => s.replace(/ \\\n {4}NVIDIA_DRIVER_CAPABILITIES=[^\n]*/, ''), /NVIDIA_DRIVER_CAPABILITIES/],
    ['no EXPOSE', (s) => s.replace('EXPOSE 8080\n', ''), /EXPOSE/],
    ['a syntax line', (s) => `# syntax=docker/dockerfile:1\n${s}`, /syntax/],
    ['a heredoc', (s) => s.replace('RUN npm run build', "RUN <<EOF\nnpm run build\nEOF"), /heredoc/],
    ['the CUDA provider never installed', (s) => s.replace('ONNXRUNTIME_NODE_INSTALL="$ORT_NODE_INSTALL"', 'X=1'), /ORT_NODE_INSTALL/],
  ];
  for (const [name, mutate, expected] of breaks) {
    const broken = mutate(dockerfile);
    t.not(broken, dockerfile, `break "${name}" applies`);
    const problems = lintDockerfile(broken, ctx);
    t.ok(
      problems.some((p) => expected.test(p)),
      `break "${name}" is caught`,
      { problems },
    );
  }
  t.ok(lintDockerignore('test\nmodels\n').length > 0, 'a .dockerignore that lets node_modules in is caught');
});

t.test('both runtime images start Ocular with the node options of npm start', async (t) => {
  const options = startOptions(repoPath('package.json'));
  t.ok(options.length > 0, `npm start gives node options: ${options.join(' ')}`);
  const cmds = [...dockerfile.matchAll(/^CMD (\[.*\])$/gm)].map((m) => JSON.parse(m[1] ?? '[]') as string[]);
  t.equal(cmds.length, 2, 'one CMD per runtime target (the HEALTHCHECK commands are indented)');
  for (const cmd of cmds) t.same(cmd, ['node', ...options, 'dist/src/main.js']);
});
