import { readFileSync } from 'node:fs';
import t from 'tap';
import { type RuleContext, lintDockerfile, lintDockerignore } from './dockerfile-rules.js';
import { configForEnv, readServerFacts, repoPath } from './server-facts.js';
import { startOptions } from '../../scripts/lib/server.js';

const dockerfile = readFileSync(repoPath('docker', 'Dockerfile'), 'utf8');

t.test('docker/Dockerfile follows the project rules', async (t) => {
  const facts = await readServerFacts(t);
  const ctx: RuleContext = { readinessPath: facts.readinessPath, port: configForEnv({}).port, grpcPort: configForEnv({}).grpcPort };
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
    ['sources before npm ci', (s) => s.replace('COPY package.json package-lock.json ./', 'COPY package.json package-lock.json ./\nCOPY src ./src'), /copied before npm ci/],
    ['npm ci without the CA secret', (s) => s.replace('RUN --mount=type=secret,id=npm_ca --mount=type=cache', 'RUN --mount=type=cache'), /npm_ca/],
    ['dev dependencies in the runtime', (s) => s.replace('COPY --from=prod-deps /app/node_modules', 'COPY --from=deps /app/node_modules'), /production-only/],
    ['no NVIDIA_DRIVER_CAPABILITIES', (s) => s.replace(/ \\\n {4}NVIDIA_DRIVER_CAPABILITIES=[^\n]*/, ''), /NVIDIA_DRIVER_CAPABILITIES/],
    ['no EXPOSE', (s) => s.replaceAll(/EXPOSE [^\n]*\n/g, ''), /EXPOSE/],
    ['no gRPC port exposed', (s) => s.replaceAll('EXPOSE 8080 8081\n', 'EXPOSE 8080\n'), /gRPC port 8081/],
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

t.test('the runtime-webgpu target adds the Vulkan loader and Mesa 25 to the CPU image, and runs as the same user', async (t) => {
  const at = dockerfile.indexOf('FROM runtime-cpu AS runtime-webgpu');
  t.ok(at > 0, 'a runtime-webgpu target built on runtime-cpu');
  const next = dockerfile.indexOf('\nFROM ', at + 1);
  const stage = dockerfile.slice(at, next < 0 ? undefined : next);
  t.match(stage, /-backports main/, "bookworm-backports in apt's sources (Debian 12's Mesa 22.3 lavapipe is refused by Dawn)");
  t.match(stage, /apt-get install -y --no-install-recommends -t "\$\{VERSION_CODENAME\}-backports" mesa-vulkan-drivers libvulkan1/);
  t.match(stage, /rm -rf \/var\/lib\/apt\/lists/, 'apt lists removed in the same layer');
  t.match(stage, /OCULAR_DEVICE=webgpu/, 'WebGPU or fail at startup');
  t.match(stage, /XDG_RUNTIME_DIR=\/tmp/, "Mesa's runtime folder on the writable tmpfs");
  const users = [...stage.matchAll(/^USER (.+)$/gm)].map((m) => m[1]);
  t.same(users.at(-1), '10001:10001', 'ends as the fixed non-root user');
  t.equal(dockerfile.lastIndexOf('\nFROM '), dockerfile.indexOf('\nFROM ${CUDA_IMAGE} AS runtime-gpu'), 'runtime-gpu stays the last target');
});

t.test('the images carry the gRPC transport\'s inference.proto', async (t) => {
  // tsc does not copy .proto files: the build script does, into dist/src, which each runtime stage copies whole.
  const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { scripts: Record<string, string> };
  t.match(pkg.scripts['build'], /cp src\/protocols\/grpc\/inference\.proto dist\/src\/protocols\/grpc\//, 'npm run build copies inference.proto into dist');
  t.match(dockerfile, /RUN npm run build\n/, 'the build stage runs npm run build');
  t.equal(dockerfile.match(/COPY --from=build \/app\/dist\/src \.\/dist\/src\n/g)?.length, 2, 'both runtime stages copy dist/src whole');
});
