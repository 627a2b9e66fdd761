/**
 * k8s/ rendered with `kubectl kustomize` for each overlay, then: every document against the Kubernetes API schemas
 * (kubernetes-models; the ServiceMonitor and ScaledObject against their CRDs' schemas), type-checked against
 * kubernetes-types for misspelt or unknown fields, and the Deployment, the models Job and the autoscalers checked
 * against what the server itself registers, parses and exports. The base alone holds core resources only; each
 * component adds exactly its own.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Container, PodSpec, Probe, Toleration, Volume } from 'kubernetes-types/core/v1.js';
import t from 'tap';
import { parseManifest } from '../../src/config/manifest.js';
import { findExecutable, requireExecutable, toolTestOptions } from '../helpers/tools.js';
import { type Doc, schemaProblems, typeProblems } from './k8s-validate.js';
import { type ServerFacts, configForEnv, kustomize, readServerFacts, readYaml, repoPath, repoRoot } from './server-facts.js';

t.setTimeout(120_000);

/** Overlays, with the device each is for and the autoscaler each opts into. */
const OVERLAYS = [
  { name: 'gpu', device: 'gpu', scaler: undefined },
  { name: 'cpu', device: 'cpu', scaler: undefined },
  { name: 'gpu-keda', device: 'gpu', scaler: 'ScaledObject' },
  { name: 'cpu-prometheus-adapter', device: 'cpu', scaler: 'HorizontalPodAutoscaler' },
] as const;
type Overlay = (typeof OVERLAYS)[number];

/** The components an overlay may opt into, and the one kind each adds. */
const COMPONENTS = [
  { dir: 'servicemonitor', adds: 'monitoring.coreos.com/v1/ServiceMonitor' },
  { dir: 'hpa-prometheus-adapter', adds: 'autoscaling/v2/HorizontalPodAutoscaler' },
  { dir: 'keda', adds: 'keda.sh/v1alpha1/ScaledObject' },
] as const;

/** What the base may hold: core API groups only, so that it applies on any cluster. */
const CORE_API_VERSIONS = new Set(['v1', 'apps/v1', 'batch/v1', 'policy/v1']);
const REQUIRED_KINDS = ['Deployment', 'Service', 'PersistentVolumeClaim', 'PodDisruptionBudget', 'Job'];
/** The server's gRPC port until its option exists here (the gRPC transport, OCULAR_GRPC_PORT, default 8081). */
const GRPC_DEFAULT_PORT = 8081;

const keyOf = (d: Doc) => `${d.apiVersion}/${d.kind}`;
const clone = <T>(v: T): T => structuredClone(v);
const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { name: string; version: string };

type PodDoc = Doc & { spec: { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } } };
interface FillList {
  files: { path: string; url?: string; from?: string; sha256?: string }[];
}

/** Renders a throwaway kustomization (base plus components) in a folder inside k8s/, which kustomize requires. */
function renderWith(components: readonly string[]): Doc[] {
  const dir = mkdtempSync(join(repoRoot, 'k8s', '.tmp-render-'));
  try {
    const rel = (p: string) => relative(dir, repoPath('k8s', p));
    const text = [
      'apiVersion: kustomize.config.k8s.io/v1beta1',
      'kind: Kustomization',
      `resources: [${rel('base')}]`,
      ...(components.length > 0 ? [`components: [${components.map((c) => rel(`components/${c}`)).join(', ')}]`] : []),
    ].join('\n');
    writeFileSync(join(dir, 'kustomization.yaml'), `${text}\n`);
    return kustomize(relative(repoRoot, dir)) as Doc[];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The image's uid, from the runtime stages' USER lines in docker/Dockerfile. */
function imageUid(): number {
  const users = [...readFileSync(repoPath('docker', 'Dockerfile'), 'utf8').matchAll(/^USER (\d+)/gm)].map((m) => Number(m[1]));
  if (users.length === 0 || new Set(users).size !== 1) throw new Error('the Dockerfile has no single numeric USER');
  return users[0] as number;
}

/**
 * The image reference .github/workflows/image.yml pushes for a flavour: ghcr.io/${{ github.repository }} with the
 * tag docker/metadata-action makes of a release (the semver {{version}} plus the flavour suffix). The owner is
 * the repository's, unknown here; the overlays leave it as OWNER.
 */
function expectedImage(flavor: string): RegExp {
  const workflow = readFileSync(repoPath('.github', 'workflows', 'image.yml'), 'utf8');
  if (!/images: ghcr\.io\/\$\{\{ github\.repository \}\}/.test(workflow)) throw new Error('image.yml no longer pushes ghcr.io/${{ github.repository }}');
  if (!/suffix=-\$\{\{ matrix\.flavor \}\}/.test(workflow) || !/type=semver,pattern=\{\{version\}\}/.test(workflow)) {
    throw new Error('image.yml no longer tags <version>-<flavor>');
  }
  return new RegExp(`^ghcr\\.io/[A-Za-z0-9-]+/${pkg.name}:${pkg.version.replace(/\./g, '\\.')}-${flavor}$`);
}

/** Security rules every pod of ours follows (the server's and the fill Job's). */
function podSecurityProblems(pod: PodSpec, c: Container, what: string): string[] {
  const problems: string[] = [];
  const uid = imageUid();
  const psc = pod.securityContext ?? {};
  const csc = c.securityContext ?? {};
  if (psc.runAsNonRoot !== true && csc.runAsNonRoot !== true) problems.push(`${what}: runAsNonRoot is not set`);
  if ((csc.runAsUser ?? psc.runAsUser) !== uid) problems.push(`${what}: runAsUser is not the image's uid ${uid}`);
  if ((csc.seccompProfile ?? psc.seccompProfile)?.type !== 'RuntimeDefault') problems.push(`${what}: seccomp profile is not RuntimeDefault`);
  if (csc.readOnlyRootFilesystem !== true) problems.push(`${what}: readOnlyRootFilesystem is not true`);
  if (csc.allowPrivilegeEscalation !== false) problems.push(`${what}: allowPrivilegeEscalation is not false`);
  if (!csc.capabilities?.drop?.includes('ALL')) problems.push(`${what}: capabilities are not all dropped`);
  if (pod.enableServiceLinks !== false) problems.push(`${what}: enableServiceLinks must be false`);
  if (pod.automountServiceAccountToken !== false) problems.push(`${what}: automountServiceAccountToken must be false`);
  for (const r of ['cpu', 'memory']) {
    if (c.resources?.requests?.[r] === undefined) problems.push(`${what}: no ${r} request`);
    if (c.resources?.limits?.[r] === undefined) problems.push(`${what}: no ${r} limit`);
  }
  return problems;
}

/** Every rule the Deployment and its companions must follow; returns the problems. */
function deploymentProblems(docs: Doc[], facts: ServerFacts, overlay: Overlay): string[] {
  const problems: string[] = [];
  const fail = (m: string) => problems.push(m);
  const find = (kind: string) => docs.filter((d) => d.kind === kind);
  for (const k of REQUIRED_KINDS) if (find(k).length !== 1) fail(`expected one ${k}, found ${find(k).length}`);
  const dep = find('Deployment')[0] as PodDoc | undefined;
  if (dep === undefined) return problems;
  const pod = dep.spec.template.spec;
  const podLabels = dep.spec.template.metadata.labels;
  const c = pod.containers.find((x) => x.name === 'ocular') as Container | undefined;
  if (c === undefined) return [...problems, 'no container named ocular'];

  // The server's own view of this container's environment.
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  let config: ReturnType<typeof configForEnv>;
  try {
    config = configForEnv(env);
  } catch (err) {
    // The server itself refuses this environment (a port given twice, a bad value): what it says is the problem.
    return [...problems, `the server refuses the container's environment: ${(err as Error).message}`];
  }
  const portOf = (p: string | number | undefined) => (typeof p === 'number' ? p : c.ports?.find((x) => x.name === p)?.containerPort);
  if (!c.ports?.some((p) => p.containerPort === config.port)) fail(`no containerPort ${config.port} (the server's port)`);
  // With a probe listener (OCULAR_PROBE_PORT) the probes go there: it answers while the main port is at its cap.
  const probePort = config.probePort ?? config.port;
  if (!c.ports?.some((p) => p.containerPort === probePort)) fail(`no containerPort ${probePort} (the server's probe port)`);
  // The gRPC listener: the server's option once it has one, else the variable as the gRPC transport will read it.
  const grpcFromConfig = (config as { grpcPort?: number | undefined }).grpcPort;
  const grpcPort = 'grpcPort' in config ? grpcFromConfig : Number(env['OCULAR_GRPC_PORT'] ?? GRPC_DEFAULT_PORT);
  const grpcDeclared = c.ports?.find((p) => p.name === 'grpc');
  if (grpcPort === undefined || grpcDeclared?.containerPort !== grpcPort) fail(`the port named grpc is ${grpcDeclared?.containerPort}, the server's gRPC port ${grpcPort}`);
  const ports = [config.port, probePort, grpcPort];
  if (new Set(ports).size !== ports.length) fail(`the HTTP, probe and gRPC ports collide: ${ports.join(', ')}`);

  const probe = (name: 'startupProbe' | 'readinessProbe' | 'livenessProbe', path: string) => {
    const p = c[name] as Probe | undefined;
    if (p?.httpGet === undefined) return fail(`${name}: no httpGet probe`);
    if (p.httpGet.path !== path) fail(`${name} probes ${p.httpGet.path}, the server's route is ${path}`);
    if (!facts.hasGet(p.httpGet.path ?? '')) fail(`${name}: ${p.httpGet.path} is not a route the server registers`);
    if (portOf(p.httpGet.port) !== probePort) fail(`${name}: port ${String(p.httpGet.port)} is not the server's probe port ${probePort}`);
  };
  probe('startupProbe', facts.readinessPath);
  probe('readinessProbe', facts.readinessPath);
  probe('livenessProbe', facts.livenessPath);
  const sp = c.startupProbe;
  const startupBudget = (sp?.periodSeconds ?? 10) * (sp?.failureThreshold ?? 3);
  if (startupBudget < 180) fail(`startupProbe allows ${startupBudget}s for model loading; at least 180s`);

  const preStop = c.lifecycle?.preStop?.exec?.command ?? [];
  const pause = preStop[0] === 'sleep' || preStop[0] === '/bin/sleep' ? Number(preStop[1]) : (c.lifecycle?.preStop?.sleep?.seconds ?? NaN);
  if (!(pause > 0)) fail('no preStop pause');
  const drain = Math.ceil(config.shutdownGraceMs / 1000);
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  if (!(grace >= pause + drain + 5)) fail(`terminationGracePeriodSeconds ${grace} < preStop ${pause} + drain ${drain} + 5 margin`);
  problems.push(...podSecurityProblems(pod, c, 'the server'));

  const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v] as [string, Volume]));
  const mountOf = (path: string) => c.volumeMounts?.find((m) => m.mountPath === path);
  for (const path of ['/tmp', config.cacheDir]) {
    const m = mountOf(path);
    if (m === undefined || m.readOnly === true || volumes.get(m.name)?.emptyDir === undefined) fail(`${path} is not a writable emptyDir mount`);
  }

  // The manifest: a ConfigMap mounted where OCULAR_MANIFEST points, valid for the server, its sources on the
  // read-only models volume, which the fill Job writes: every file the manifest names, with the same sha256.
  const manifestDir = config.manifest.slice(0, config.manifest.lastIndexOf('/'));
  const manifestKey = config.manifest.slice(config.manifest.lastIndexOf('/') + 1);
  const cmMount = mountOf(manifestDir);
  const cmName = cmMount === undefined ? undefined : volumes.get(cmMount.name)?.configMap?.name;
  const cm = find('ConfigMap').find((d) => d.metadata.name === cmName) as (Doc & { data?: Record<string, string> }) | undefined;
  const manifestText = cm?.data?.[manifestKey];
  const modelsMount = c.volumeMounts?.find((m) => m.readOnly === true && volumes.get(m.name)?.persistentVolumeClaim !== undefined);
  const claim = modelsMount === undefined ? undefined : volumes.get(modelsMount.name)?.persistentVolumeClaim?.claimName;
  if (modelsMount === undefined) fail('no read-only models volume from a PersistentVolumeClaim');
  const pvc = find('PersistentVolumeClaim')[0] as (Doc & { spec: { accessModes?: string[] } }) | undefined;
  if (claim !== pvc?.metadata.name) fail('the models volume does not use the PVC');
  if (pvc !== undefined && pvc.spec.accessModes?.join() !== 'ReadWriteOnce') fail(`the models PVC asks for ${pvc.spec.accessModes?.join()}, not ReadWriteOnce (which every storage class provisions)`);
  const needed = new Map<string, string | undefined>();
  if (manifestText === undefined) fail(`OCULAR_MANIFEST ${config.manifest} is not a key of a mounted ConfigMap`);
  else {
    try {
      const manifest = parseManifest(JSON.parse(manifestText), 'ConfigMap manifest');
      // Every local file of the manifest, with the sha256 the manifest gives it (sources have one, labels not).
      const walk = (v: unknown): void => {
        if (Array.isArray(v)) return v.forEach(walk);
        if (v === null || typeof v !== 'object') return;
        const o = v as Record<string, unknown>;
        for (const key of ['source', 'labels']) {
          const path = o[key];
          if (typeof path !== 'string' || path.startsWith('https://')) continue;
          if (!path.startsWith(`${modelsMount?.mountPath ?? '/models'}/`)) fail(`manifest ${key} ${path} is neither on the models volume nor a URL`);
          else needed.set(path.slice((modelsMount?.mountPath ?? '').length + 1), key === 'source' ? (o['sha256'] as string | undefined) : undefined);
        }
        Object.values(o).forEach(walk);
      };
      walk(manifest);
    } catch (err) {
      fail(`the ConfigMap manifest is invalid: ${(err as Error).message}`);
    }
  }

  // The fill Job: writes the same claim, lists every file the manifest needs, runs as the server's pods do.
  const job = find('Job').find((d) => d.metadata.name === 'ocular-models-fill') as PodDoc | undefined;
  if (job === undefined) fail('no Job ocular-models-fill');
  else {
    const jpod = job.spec.template.spec;
    const jc = jpod.containers[0] as Container;
    problems.push(...podSecurityProblems(jpod, jc, 'the fill Job'));
    if (jc.image !== c.image) fail(`the fill Job runs ${jc.image}, not the server's image ${c.image}`);
    const jvolumes = new Map((jpod.volumes ?? []).map((v) => [v.name, v] as [string, Volume]));
    const jenv = Object.fromEntries((jc.env ?? []).map((e) => [e.name, e.value ?? '']));
    const target = jc.volumeMounts?.find((m) => m.mountPath === jenv['FILL_DIR']);
    if (target === undefined || target.readOnly === true || jvolumes.get(target.name)?.persistentVolumeClaim?.claimName !== claim) fail('the fill Job does not write the models claim at FILL_DIR');
    const listDir = (jenv['FILL_LIST'] ?? '').slice(0, (jenv['FILL_LIST'] ?? '').lastIndexOf('/'));
    const listMount = jc.volumeMounts?.find((m) => m.mountPath === listDir);
    const sources = (listMount === undefined ? undefined : jvolumes.get(listMount.name)?.projected?.sources) ?? [];
    const listMap = find('ConfigMap').find((d) => sources.some((s) => s.configMap?.name === d.metadata.name && (d as { data?: Record<string, string> }).data?.['models.json'] !== undefined)) as
      | (Doc & { data: Record<string, string> })
      | undefined;
    if (listMap === undefined) fail('the fill Job mounts no list (models.json) at FILL_LIST');
    else {
      const list = JSON.parse(listMap.data['models.json'] ?? '{}') as FillList;
      for (const [path, sha256] of needed) {
        const entry = list.files.find((f) => f.path === path);
        if (entry === undefined) fail(`the fill list does not write ${path}, which the manifest names`);
        else if (sha256 !== undefined && entry.sha256 !== sha256) fail(`the fill list's sha256 for ${path} is not the manifest's`);
      }
    }
  }

  // Device policy per overlay: the GPU's pods (and the Job, which must bind the volume where they run) on GPU nodes.
  const gpus = c.resources?.limits?.['nvidia.com/gpu'];
  const gpuTolerated = (tolerations: Toleration[] | undefined) => (tolerations ?? []).some((x) => x.key === 'nvidia.com/gpu' && x.effect === 'NoSchedule');
  if (!expectedImage(overlay.device).test(c.image ?? '')) fail(`the ${overlay.name} overlay runs ${c.image}, not ${expectedImage(overlay.device).source}`);
  if (overlay.device === 'gpu') {
    if (gpus !== '1') fail('the gpu overlay must limit nvidia.com/gpu to 1');
    if (env['OCULAR_DEVICE'] !== 'cuda') fail('the gpu overlay must set OCULAR_DEVICE=cuda');
    if (pod.runtimeClassName !== 'nvidia') fail('the gpu overlay must run with runtimeClassName nvidia');
    if (pod.nodeSelector?.['nvidia.com/gpu.present'] !== 'true') fail('the gpu overlay must select GPU nodes (nvidia.com/gpu.present)');
    if (!gpuTolerated(pod.tolerations)) fail('the gpu overlay must tolerate the nvidia.com/gpu taint');
    const jpod = job?.spec.template.spec;
    if (jpod !== undefined && (jpod.nodeSelector?.['nvidia.com/gpu.present'] !== 'true' || !gpuTolerated(jpod.tolerations))) fail('the fill Job must run on the GPU nodes too');
    if (jpod?.containers[0]?.resources?.limits?.['nvidia.com/gpu'] !== undefined) fail('the fill Job must not take a GPU');
  } else {
    if (gpus !== undefined) fail('the cpu overlay must not ask for a GPU');
    if (env['OCULAR_DEVICE'] !== 'cpu') fail('the cpu overlay must set OCULAR_DEVICE=cpu');
    if (pod.runtimeClassName !== undefined) fail('the cpu overlay must not set a runtimeClassName');
  }

  // Service, ServiceMonitor, PDB wired to the pods and to the server's routes; the gRPC port as h2c.
  const matches = (sel: Record<string, string> | undefined) => sel !== undefined && Object.entries(sel).every(([k, v]) => podLabels[k] === v);
  const svc = find('Service')[0] as (Doc & { spec: { selector?: Record<string, string>; ports: { name?: string; targetPort?: string | number; appProtocol?: string }[] } }) | undefined;
  if (svc !== undefined) {
    if (!matches(svc.spec.selector)) fail('the Service does not select the pods');
    const byName = (n: string) => svc.spec.ports.find((p) => p.name === n);
    if (portOf(byName('http')?.targetPort) !== config.port) fail("Service port http: targetPort is not the server's port");
    if (portOf(byName('grpc')?.targetPort) !== grpcPort) fail("Service port grpc: targetPort is not the server's gRPC port");
    if (byName('grpc')?.appProtocol !== 'kubernetes.io/h2c') fail('Service port grpc: appProtocol is not kubernetes.io/h2c');
    if (svc.spec.ports.some((p) => portOf(p.targetPort) === probePort)) fail('the probe port is in the Service');
  }
  const sm = find('ServiceMonitor')[0] as (Doc & { spec: { selector: { matchLabels?: Record<string, string> }; endpoints: { port?: string; path?: string }[] } }) | undefined;
  if (sm !== undefined && svc !== undefined) {
    if (!Object.entries(sm.spec.selector.matchLabels ?? {}).every(([k, v]) => svc.metadata.labels?.[k] === v)) fail('the ServiceMonitor does not select the Service');
    for (const e of sm.spec.endpoints) {
      if (!svc.spec.ports.some((p) => p.name === e.port)) fail(`ServiceMonitor port ${e.port} is not a Service port name`);
      if ((e.path ?? '/metrics') !== facts.metricsPath) fail(`ServiceMonitor scrapes ${e.path}, the server serves ${facts.metricsPath}`);
    }
  }
  const pdb = find('PodDisruptionBudget')[0] as (Doc & { spec: { selector?: { matchLabels?: Record<string, string> } } }) | undefined;
  if (pdb !== undefined && !matches(pdb.spec.selector?.matchLabels)) fail('the PodDisruptionBudget does not select the pods');
  problems.push(...autoscalerProblems(docs, facts, dep.metadata.name, svc?.metadata.name ?? ''));
  return problems;
}

/** The metric names a PromQL expression reads, histogram series (_sum, _count, _bucket) under their family's name. */
function metricsRead(query: string): string[] {
  return [...query.matchAll(/\b(ocular_[a-z_]+)\b/g)].map((m) => (m[1] ?? '').replace(/_(sum|count|bucket)$/, ''));
}

/** The HPA (prometheus-adapter) and the KEDA ScaledObject: what they scale, on what, and never both. */
function autoscalerProblems(docs: Doc[], facts: ServerFacts, deployment: string, service: string): string[] {
  const problems: string[] = [];
  const fail = (m: string) => problems.push(m);
  const hpa = docs.find((d) => d.kind === 'HorizontalPodAutoscaler') as
    | (Doc & { spec: { scaleTargetRef: { kind: string; name: string }; metrics?: { type: string; pods?: { metric: { name: string } } }[] } })
    | undefined;
  const so = docs.find((d) => d.kind === 'ScaledObject') as
    | (Doc & {
        spec: {
          scaleTargetRef: { kind?: string; name: string };
          minReplicaCount?: number;
          idleReplicaCount?: number;
          triggers: { type: string; name?: string; metricType?: string; metadata: Record<string, string> }[];
        };
      })
    | undefined;
  if (hpa !== undefined && so !== undefined) fail('both an HPA and a KEDA ScaledObject: each would own the replica count');
  if (hpa !== undefined) {
    if (hpa.spec.scaleTargetRef.kind !== 'Deployment' || hpa.spec.scaleTargetRef.name !== deployment) fail('the HPA does not scale the Deployment');
    const custom = (hpa.spec.metrics ?? []).filter((m) => m.type === 'Pods').map((m) => m.pods?.metric.name ?? '');
    if (custom.length === 0) fail('the HPA scales on no inference-load metric (only CPU)');
    const adapter = readYaml<{ rules: { custom: { seriesQuery: string; name: { as: string } }[] } }>(
      readFileSync(repoPath('k8s', 'components', 'hpa-prometheus-adapter', 'prometheus-adapter-values.yaml'), 'utf8'),
    );
    for (const name of custom) {
      const rule = adapter.rules.custom.find((r) => r.name.as === name);
      if (rule === undefined) fail(`HPA metric ${name} has no prometheus-adapter rule`);
      const series = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(rule?.seriesQuery ?? '')?.[1] ?? '';
      if (!facts.metricNames.has(series)) fail(`the adapter rule for ${name} reads ${series}, which the server does not export`);
    }
  }
  if (so !== undefined) {
    if ((so.spec.scaleTargetRef.kind ?? 'Deployment') !== 'Deployment' || so.spec.scaleTargetRef.name !== deployment) fail('the ScaledObject does not scale the Deployment');
    // Scale to zero stays off: a pod takes minutes to load and warm up its models.
    if (!((so.spec.minReplicaCount ?? 0) >= 1) || so.spec.idleReplicaCount !== undefined) fail('the ScaledObject may scale to zero (minReplicaCount < 1 or an idleReplicaCount)');
    const read = new Set<string>();
    for (const trigger of so.spec.triggers) {
      const where = `ScaledObject trigger ${trigger.name ?? trigger.type}`;
      if (trigger.type !== 'prometheus') fail(`${where}: not a prometheus trigger`);
      if (trigger.metricType !== 'AverageValue') fail(`${where}: not AverageValue (per pod)`);
      if (!(Number(trigger.metadata['threshold']) > 0)) fail(`${where}: no positive threshold`);
      if (!/^https?:\/\//.test(trigger.metadata['serverAddress'] ?? '')) fail(`${where}: no Prometheus serverAddress`);
      const query = trigger.metadata['query'] ?? '';
      const names = metricsRead(query);
      if (names.length === 0) fail(`${where}: reads no ocular_ metric`);
      for (const name of names) {
        read.add(name);
        if (!facts.metricNames.has(name)) fail(`${where}: reads ${name}, which the server does not export`);
      }
      if (!query.includes(`job="${service}"`)) fail(`${where}: does not select the Service's scrape job (job="${service}")`);
    }
    for (const needed of ['ocular_queue_depth', 'ocular_request_duration_seconds']) if (!read.has(needed)) fail(`the ScaledObject does not scale on ${needed}`);
  }
  return problems;
}

t.test('the base holds core resources only; each component adds exactly its own', async (t) => {
  const base = renderWith([]);
  t.same(schemaProblems(base), [], 'the base is valid against the API schemas');
  t.same(
    base.filter((d) => !CORE_API_VERSIONS.has(d.apiVersion)).map(keyOf),
    [],
    'no monitoring.coreos.com, autoscaling or keda.sh resource (nothing outside the core API groups)',
  );
  const baseKeys = base.map((d) => `${keyOf(d)}/${d.metadata.name}`).sort();
  const added: Doc[] = [];
  for (const { dir, adds } of COMPONENTS) {
    const docs = renderWith([dir]);
    const own = docs.filter((d) => !baseKeys.includes(`${keyOf(d)}/${d.metadata.name}`));
    t.same(own.map((d) => `${keyOf(d)}/${d.metadata.name}`), [`${adds}/ocular`], `components/${dir} adds one ${adds}`);
    t.same(schemaProblems(docs), [], `components/${dir}: valid against its schema`);
    added.push(...own);
  }
  // One type check for all three (each compiles the types anew).
  t.same(typeProblems(added), [], 'what the components add type-checks');
});

t.test('the fill list of the base names real files: each URL of an npm package is its installed file, by sha256', async (t) => {
  const list = JSON.parse(readFileSync(repoPath('k8s', 'base', 'models-fill.json'), 'utf8')) as FillList;
  t.ok(list.files.length > 0, 'the list is not empty');
  for (const f of list.files) {
    const m = /^https:\/\/cdn\.jsdelivr\.net\/npm\/((?:@[^/]+\/)?[^/@]+)@([^/]+)\/(.+)$/.exec(f.url ?? '');
    if (m === null) {
      t.fail(`${f.path}: ${f.url} is not an npm package file (extend this test for another host)`);
      continue;
    }
    const [, name, version, file] = m as unknown as [string, string, string, string];
    const installed = JSON.parse(readFileSync(repoPath('node_modules', name, 'package.json'), 'utf8')) as { version: string };
    t.equal(version, installed.version, `${f.path}: ${name}@${version} is the version package.json pins`);
    const sha = createHash('sha256').update(readFileSync(repoPath('node_modules', name, file))).digest('hex');
    t.equal(f.sha256, sha, `${f.path}: the listed sha256 is that of ${name}/${file}`);
  }
});

const PROMTOOL = findExecutable('promtool', '/usr/bin/promtool');

/** promtool's verdict on PromQL expressions, as the expressions of recording rules; empty when all parse. */
function promqlProblems(queries: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-promql-'));
  try {
    const rules = { groups: [{ name: 'keda', rules: queries.map((expr, i) => ({ record: `ocular:keda_query_${i}`, expr })) }] };
    writeFileSync(join(dir, 'rules.json'), JSON.stringify(rules));
    execFileSync(PROMTOOL as string, ['check', 'rules', join(dir, 'rules.json')], { encoding: 'utf8', stdio: 'pipe' });
    return '';
  } catch (err) {
    return String((err as { stdout?: string }).stdout ?? '') + String((err as { stderr?: string }).stderr ?? (err as Error).message);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

t.test("the KEDA triggers' queries are PromQL that Prometheus parses", { ...toolTestOptions(PROMTOOL, 'prometheus') }, async (t) => {
  if (!requireExecutable(t, PROMTOOL, 'promtool (Debian package prometheus)')) return;
  const so = renderWith(['keda']).find((d) => d.kind === 'ScaledObject') as Doc & { spec: { triggers: { metadata: Record<string, string> }[] } };
  const queries = so.spec.triggers.map((tr) => tr.metadata['query'] ?? '');
  t.equal(promqlProblems(queries), '', `promtool check rules accepts ${queries.length} queries`);
  t.match(promqlProblems(['sum(rate(ocular_request_duration_seconds_sum{job="ocular"}[1m])']), /parse error|unclosed/i, 'break "an unbalanced query" is caught');
});

// The server's routes, port options and metrics, read once from the real app.
const facts = await readServerFacts(t);

for (const overlay of OVERLAYS) {
  t.test(`k8s/overlays/${overlay.name}`, async (t) => {
    const docs = kustomize(`k8s/overlays/${overlay.name}`) as Doc[];
    t.same(schemaProblems(docs), [], 'every document is valid against its API schema (the operators\' resources against their CRDs)');
    t.same(typeProblems(docs), [], 'every document type-checks against its types (no unknown fields)');
    t.same(deploymentProblems(docs, facts, overlay), [], 'the Deployment, its Job and autoscaler follow the rules and agree with the server');
    t.same(
      docs.filter((d) => d.kind === 'HorizontalPodAutoscaler' || d.kind === 'ScaledObject').map((d) => d.kind),
      overlay.scaler === undefined ? [] : [overlay.scaler],
      `autoscaler: ${overlay.scaler ?? 'none'}`,
    );

    if (overlay.name !== 'gpu-keda') return;
    // Deliberate breaks, each of which must be caught.
    const dep = () => {
      const copy = clone(docs);
      const d = copy.find((x) => x.kind === 'Deployment') as PodDoc;
      const job = copy.find((x) => x.kind === 'Job') as PodDoc;
      const so = copy.find((x) => x.kind === 'ScaledObject') as Doc & { spec: Record<string, unknown> & { triggers: { metadata: Record<string, string> }[] } };
      return { copy, pod: d.spec.template.spec, c: d.spec.template.spec.containers[0] as Container, jobPod: job.spec.template.spec, so };
    };
    const rules: [string, (x: ReturnType<typeof dep>) => void, RegExp][] = [
      ['liveness on the readiness route', ({ c }) => ((c.livenessProbe as Probe).httpGet = { path: facts.readinessPath, port: 'probes' }), /livenessProbe probes/],
      ['a probe on a path the server does not serve', ({ c }) => ((c.readinessProbe as Probe).httpGet = { path: '/ready', port: 'probes' }), /not a route/],
      ['a probe on the wrong port', ({ c }) => ((c.startupProbe as Probe).httpGet = { path: facts.readinessPath, port: 9090 }), /not the server's probe port/],
      ['a probe on the capped main port', ({ c }) => ((c.livenessProbe as Probe).httpGet = { path: facts.livenessPath, port: 'http' }), /not the server's probe port/],
      ['no probe listener', ({ c }) => (c.env = (c.env ?? []).filter((e) => e.name !== 'OCULAR_PROBE_PORT')), /not the server's probe port/],
      ['the probe listener on the gRPC port', ({ c }) => (c.env = (c.env ?? []).map((e) => (e.name === 'OCULAR_PROBE_PORT' ? { ...e, value: '8081' } : e))), /collide|is also OCULAR_PROBE_PORT/],
      ['no grpc container port', ({ c }) => (c.ports = (c.ports ?? []).filter((p) => p.name !== 'grpc')), /port named grpc/],
      ['a stingy startup probe', ({ c }) => ((c.startupProbe as Probe).failureThreshold = 3), /startupProbe allows/],
      ['a short termination grace', ({ pod }) => (pod.terminationGracePeriodSeconds = 30), /terminationGracePeriodSeconds/],
      ['service links on', ({ pod }) => (pod.enableServiceLinks = true), /enableServiceLinks/],
      ['a writable root', ({ c }) => ((c.securityContext ?? {}).readOnlyRootFilesystem = false), /readOnlyRootFilesystem/],
      ['a different uid', ({ pod, c }) => ((pod.securityContext ?? {}).runAsUser = (c.securityContext ?? {}).runAsUser = 1000), /uid/],
      ['capabilities kept', ({ c }) => ((c.securityContext ?? {}).capabilities = { drop: ['NET_RAW'] }), /capabilities/],
      ['no GPU limit', ({ c }) => delete c.resources?.limits?.['nvidia.com/gpu'], /nvidia.com\/gpu/],
      ['no runtime class', ({ pod }) => delete pod.runtimeClassName, /runtimeClassName/],
      ['no GPU node selector', ({ pod }) => delete pod.nodeSelector, /GPU nodes/],
      ['the fill Job off the GPU nodes', ({ jobPod }) => delete jobPod.tolerations, /fill Job must run on the GPU nodes/],
      ['the fill Job as root', ({ jobPod }) => ((jobPod.containers[0]?.securityContext ?? {}).runAsUser = 0), /fill Job: runAsUser/],
      ['the image workflow\'s name not used', ({ c }) => (c.image = 'ghcr.io/ocular-project/ocular:1.0.0-gpu'), /overlay runs/],
      ['scale to zero', ({ so }) => (so.spec['minReplicaCount'] = 0), /scale to zero/],
      ['a KEDA query on a metric the server lacks', ({ so }) => ((so.spec.triggers[0] as { metadata: Record<string, string> }).metadata['query'] = 'sum(ocular_queue_length{job="ocular"})'), /does not export/],
    ];
    for (const [name, mutate, expected] of rules) {
      const x = dep();
      mutate(x);
      const problems = deploymentProblems(x.copy, facts, overlay);
      t.ok(problems.some((p) => expected.test(p)), `break "${name}" is caught`, { problems });
    }
    const both = clone(docs);
    both.push(...renderWith(['hpa-prometheus-adapter']).filter((d) => d.kind === 'HorizontalPodAutoscaler'));
    t.ok(deploymentProblems(both, facts, overlay).some((p) => /both an HPA and a KEDA ScaledObject/.test(p)), 'break "two autoscalers" is caught');
    // Two misspellings in one copy, one type check: each must be reported.
    const typo = dep();
    (typo.c as unknown as Record<string, unknown>)['readinesProbe'] = typo.c.readinessProbe;
    typo.so.spec['minReplicas'] = 1;
    const typoProblems = typeProblems(typo.copy).join('\n');
    t.match(typoProblems, /readinesProbe/, 'break "a misspelt field" is caught by the type check');
    t.match(typoProblems, /minReplicas/, 'break "a misspelt ScaledObject field" is caught by the type check');
    const wrongType = dep();
    (wrongType.pod as unknown as Record<string, unknown>)['terminationGracePeriodSeconds'] = 'forty';
    t.ok(schemaProblems(wrongType.copy).length > 0, 'break "a wrong type" is caught by the API schema');
    const sm = clone(docs);
    const monitor = sm.find((d) => d.kind === 'ServiceMonitor') as Doc & { spec: { endpoints: unknown } };
    monitor.spec.endpoints = 'http';
    t.ok(schemaProblems(sm).length > 0, 'break "a malformed ServiceMonitor" is caught by its CRD schema');
    const keda = dep();
    keda.so.spec.triggers = 'prometheus' as never;
    t.ok(schemaProblems(keda.copy).length > 0, 'break "a malformed ScaledObject" is caught by its CRD schema');
  });
}
