/**
 * k8s/ rendered with `kubectl kustomize` for each overlay, then: every document against the Kubernetes API schemas
 * (kubernetes-models; the ServiceMonitor against its CRD's schema), type-checked against kubernetes-types for
 * misspelt or unknown fields, and the Deployment checked against what the server itself registers and parses.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import type { Container, PodSpec, Probe, Volume } from 'kubernetes-types/core/v1.js';
import { ConfigMap, PersistentVolumeClaim, Service } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import t from 'tap';
import ts from 'typescript';
import { parseManifest } from '../../src/config/manifest.js';
import { type ServerFacts, configForEnv, kustomize, readServerFacts, readYaml, repoPath, repoRoot } from './server-facts.js';

type Doc = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> } };

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** kubernetes-types (and the operator's interfaces for the CRD) for the type check. */
const TYPES: Record<string, [string, string]> = {
  'apps/v1/Deployment': ['Deployment', 'kubernetes-types/apps/v1.js'],
  'v1/Service': ['Service', 'kubernetes-types/core/v1.js'],
  'v1/ConfigMap': ['ConfigMap', 'kubernetes-types/core/v1.js'],
  'v1/PersistentVolumeClaim': ['PersistentVolumeClaim', 'kubernetes-types/core/v1.js'],
  'policy/v1/PodDisruptionBudget': ['PodDisruptionBudget', 'kubernetes-types/policy/v1.js'],
  'autoscaling/v2/HorizontalPodAutoscaler': ['HorizontalPodAutoscaler', 'kubernetes-types/autoscaling/v2.js'],
  'monitoring.coreos.com/v1/ServiceMonitor': ['IServiceMonitor', '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'],
};

const REQUIRED_KINDS = ['Deployment', 'Service', 'ConfigMap', 'PersistentVolumeClaim', 'PodDisruptionBudget', 'HorizontalPodAutoscaler', 'ServiceMonitor'];
const OVERLAYS = ['gpu', 'cpu'] as const;

const keyOf = (d: Doc) => `${d.apiVersion}/${d.kind}`;
const clone = <T>(v: T): T => structuredClone(v);

/** Schema validation; returns the problems. */
function schemaProblems(docs: Doc[]): string[] {
  const problems: string[] = [];
  for (const d of docs) {
    const Model = MODELS[keyOf(d)];
    if (Model === undefined) {
      problems.push(`${keyOf(d)} ${d.metadata.name}: no schema known for this kind`);
      continue;
    }
    try {
      new Model(clone(d) as never).validate();
    } catch (err) {
      problems.push(`${d.kind} ${d.metadata.name}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/**
 * Type-checks the documents as object literals of their kubernetes-types types, so that a misspelt or unknown
 * field is an excess-property error. The file is written inside the repository so that module resolution finds
 * node_modules; it is removed afterwards.
 */
function typeProblems(docs: Doc[]): string[] {
  const dir = mkdtempSync(join(repoRoot, '.tmp-k8s-types-'));
  try {
    const imports = new Map<string, Set<string>>();
    const lines: string[] = [];
    docs.forEach((d, i) => {
      const type = TYPES[keyOf(d)];
      if (type === undefined) return;
      imports.set(type[1], (imports.get(type[1]) ?? new Set()).add(type[0]));
      lines.push(`// ${d.kind} ${d.metadata.name}\nexport const doc${i}: ${type[0]} = ${JSON.stringify(d, null, 2)};`);
    });
    const head = [...imports].map(([mod, names]) => `import type { ${[...names].join(', ')} } from '${mod}';`);
    const file = join(dir, 'docs.ts');
    writeFileSync(file, `${head.join('\n')}\n${lines.join('\n')}\n`);
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      skipLibCheck: true,
      types: [],
    });
    return ts.getPreEmitDiagnostics(program).map((diag) => {
      const where = diag.file !== undefined && diag.start !== undefined ? diag.file.getLineAndCharacterOfPosition(diag.start).line + 1 : 0;
      return `line ${where}: ${ts.flattenDiagnosticMessageText(diag.messageText, ' ')}`;
    });
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

/** Every rule the Deployment and its companions must follow; returns the problems. */
function deploymentProblems(docs: Doc[], facts: ServerFacts, overlay: 'gpu' | 'cpu'): string[] {
  const problems: string[] = [];
  const fail = (m: string) => problems.push(m);
  const find = (kind: string) => docs.filter((d) => d.kind === kind);
  for (const k of REQUIRED_KINDS) if (find(k).length !== 1) fail(`expected one ${k}, found ${find(k).length}`);
  const dep = find('Deployment')[0] as (Doc & { spec: { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } } }) | undefined;
  if (dep === undefined) return problems;
  const pod = dep.spec.template.spec;
  const podLabels = dep.spec.template.metadata.labels;
  const c = pod.containers.find((x) => x.name === 'ocular') as Container | undefined;
  if (c === undefined) return [...problems, 'no container named ocular'];

  // The server's own view of this container's environment.
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  const config = configForEnv(env);
  const portOf = (p: string | number | undefined) => (typeof p === 'number' ? p : c.ports?.find((x) => x.name === p)?.containerPort);
  if (!c.ports?.some((p) => p.containerPort === config.port)) fail(`no containerPort ${config.port} (the server's port)`);

  const probe = (name: 'startupProbe' | 'readinessProbe' | 'livenessProbe', path: string) => {
    const p = c[name] as Probe | undefined;
    if (p?.httpGet === undefined) return fail(`${name}: no httpGet probe`);
    if (p.httpGet.path !== path) fail(`${name} probes ${p.httpGet.path}, the server's route is ${path}`);
    if (!facts.hasGet(p.httpGet.path ?? '')) fail(`${name}: ${p.httpGet.path} is not a route the server registers`);
    if (portOf(p.httpGet.port) !== config.port) fail(`${name}: port ${String(p.httpGet.port)} is not the server's port ${config.port}`);
  };
  probe('startupProbe', facts.readinessPath);
  probe('readinessProbe', facts.readinessPath);
  probe('livenessProbe', facts.livenessPath);
  const sp = c.startupProbe;
  const startupBudget = (sp?.periodSeconds ?? 10) * (sp?.failureThreshold ?? 3);
  if (startupBudget < 180) fail(`startupProbe allows ${startupBudget}s for model loading; at least 180s`);

  if (pod.enableServiceLinks !== false) fail('enableServiceLinks must be false');
  const preStop = c.lifecycle?.preStop?.exec?.command ?? [];
  const pause = preStop[0] === 'sleep' || preStop[0] === '/bin/sleep' ? Number(preStop[1]) : (c.lifecycle?.preStop?.sleep?.seconds ?? NaN);
  if (!(pause > 0)) fail('no preStop pause');
  const drain = Math.ceil(config.shutdownGraceMs / 1000);
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  if (!(grace >= pause + drain + 5)) fail(`terminationGracePeriodSeconds ${grace} < preStop ${pause} + drain ${drain} + 5 margin`);

  const uid = imageUid();
  const psc = pod.securityContext ?? {};
  const csc = c.securityContext ?? {};
  if (psc.runAsNonRoot !== true && csc.runAsNonRoot !== true) fail('runAsNonRoot is not set');
  if ((csc.runAsUser ?? psc.runAsUser) !== uid) fail(`runAsUser is not the image's uid ${uid}`);
  if ((csc.seccompProfile ?? psc.seccompProfile)?.type !== 'RuntimeDefault') fail('seccomp profile is not RuntimeDefault');
  if (csc.readOnlyRootFilesystem !== true) fail('readOnlyRootFilesystem is not true');
  if (csc.allowPrivilegeEscalation !== false) fail('allowPrivilegeEscalation is not false');
  if (!csc.capabilities?.drop?.includes('ALL')) fail('capabilities are not all dropped');

  const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v] as [string, Volume]));
  const mountOf = (path: string) => c.volumeMounts?.find((m) => m.mountPath === path);
  for (const path of ['/tmp', config.cacheDir]) {
    const m = mountOf(path);
    if (m === undefined || m.readOnly === true || volumes.get(m.name)?.emptyDir === undefined) fail(`${path} is not a writable emptyDir mount`);
  }
  for (const r of ['cpu', 'memory']) {
    if (c.resources?.requests?.[r] === undefined) fail(`no ${r} request`);
    if (c.resources?.limits?.[r] === undefined) fail(`no ${r} limit`);
  }

  // The manifest: a ConfigMap mounted where OCULAR_MANIFEST points, valid for the server, its sources on the
  // read-only models volume.
  const manifestDir = config.manifest.slice(0, config.manifest.lastIndexOf('/'));
  const manifestKey = config.manifest.slice(config.manifest.lastIndexOf('/') + 1);
  const cmMount = mountOf(manifestDir);
  const cmName = cmMount === undefined ? undefined : volumes.get(cmMount.name)?.configMap?.name;
  const cm = find('ConfigMap').find((d) => d.metadata.name === cmName) as (Doc & { data?: Record<string, string> }) | undefined;
  const manifestText = cm?.data?.[manifestKey];
  if (manifestText === undefined) fail(`OCULAR_MANIFEST ${config.manifest} is not a key of a mounted ConfigMap`);
  else {
    const modelsMount = c.volumeMounts?.find((m) => m.readOnly === true && volumes.get(m.name)?.persistentVolumeClaim !== undefined);
    if (modelsMount === undefined) fail('no read-only models volume from a PersistentVolumeClaim');
    try {
      const manifest = parseManifest(JSON.parse(manifestText), 'ConfigMap manifest');
      const sources = JSON.stringify(manifest).match(/"(source|labels)":"[^"]+"/g) ?? [];
      for (const s of sources) {
        const path = s.split('"')[3] ?? '';
        if (!path.startsWith('https://') && !path.startsWith(`${modelsMount?.mountPath ?? '/models'}/`)) fail(`manifest ${s} is neither on the models volume nor a URL`);
      }
    } catch (err) {
      fail(`the ConfigMap manifest is invalid: ${(err as Error).message}`);
    }
    const pvc = find('PersistentVolumeClaim')[0];
    if (modelsMount !== undefined && volumes.get(modelsMount.name)?.persistentVolumeClaim?.claimName !== pvc?.metadata.name) fail('the models volume does not use the PVC');
  }

  // Device policy per overlay.
  const gpus = c.resources?.limits?.['nvidia.com/gpu'];
  if (overlay === 'gpu') {
    if (gpus !== '1') fail('the gpu overlay must limit nvidia.com/gpu to 1');
    if (env['OCULAR_DEVICE'] !== 'cuda') fail('the gpu overlay must set OCULAR_DEVICE=cuda');
    if (!c.image?.endsWith('-gpu')) fail(`the gpu overlay runs ${c.image}`);
  } else {
    if (gpus !== undefined) fail('the cpu overlay must not ask for a GPU');
    if (env['OCULAR_DEVICE'] !== 'cpu') fail('the cpu overlay must set OCULAR_DEVICE=cpu');
    if (!c.image?.endsWith('-cpu')) fail(`the cpu overlay runs ${c.image}`);
  }

  // Service, ServiceMonitor, PDB, HPA wired to the pods and to the server's routes and metrics.
  const matches = (sel: Record<string, string> | undefined) => sel !== undefined && Object.entries(sel).every(([k, v]) => podLabels[k] === v);
  const svc = find('Service')[0] as (Doc & { spec: { selector?: Record<string, string>; ports: { name?: string; targetPort?: string | number }[] } }) | undefined;
  if (svc !== undefined) {
    if (!matches(svc.spec.selector)) fail('the Service does not select the pods');
    for (const p of svc.spec.ports) if (portOf(p.targetPort) !== config.port) fail(`Service port ${p.name}: targetPort is not the server's port`);
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

  const hpa = find('HorizontalPodAutoscaler')[0] as
    | (Doc & { spec: { scaleTargetRef: { kind: string; name: string }; metrics?: { type: string; pods?: { metric: { name: string } } }[] } })
    | undefined;
  if (hpa !== undefined) {
    if (hpa.spec.scaleTargetRef.kind !== 'Deployment' || hpa.spec.scaleTargetRef.name !== dep.metadata.name) fail('the HPA does not scale the Deployment');
    const custom = (hpa.spec.metrics ?? []).filter((m) => m.type === 'Pods').map((m) => m.pods?.metric.name ?? '');
    if (custom.length === 0) fail('the HPA scales on no inference-load metric (only CPU)');
    const adapter = readYaml<{ rules: { custom: { seriesQuery: string; name: { as: string } }[] } }>(
      readFileSync(repoPath('k8s', 'prometheus-adapter', 'values.yaml'), 'utf8'),
    );
    for (const name of custom) {
      const rule = adapter.rules.custom.find((r) => r.name.as === name);
      if (rule === undefined) fail(`HPA metric ${name} has no prometheus-adapter rule`);
      const series = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(rule?.seriesQuery ?? '')?.[1] ?? '';
      if (!facts.metricNames.has(series)) fail(`the adapter rule for ${name} reads ${series}, which the server does not export`);
    }
  }
  return problems;
}

for (const overlay of OVERLAYS) {
  t.test(`k8s/overlays/${overlay}`, async (t) => {
    const facts = await readServerFacts(t);
    const docs = kustomize(`k8s/overlays/${overlay}`) as Doc[];
    t.same(schemaProblems(docs), [], 'every document is valid against its API schema (the ServiceMonitor against its CRD)');
    t.same(typeProblems(docs), [], 'every document type-checks against kubernetes-types (no unknown fields)');
    t.same(deploymentProblems(docs, facts, overlay), [], 'the Deployment follows the rules and agrees with the server');

    if (overlay !== 'gpu') return;
    // Deliberate breaks, each of which must be caught.
    const dep = () => {
      const copy = clone(docs);
      const d = copy.find((x) => x.kind === 'Deployment') as Doc & { spec: { template: { spec: PodSpec } } };
      return { copy, pod: d.spec.template.spec, c: d.spec.template.spec.containers[0] as Container };
    };
    const rules: [string, (x: ReturnType<typeof dep>) => void, RegExp][] = [
      ['liveness on the readiness route', ({ c }) => ((c.livenessProbe as Probe).httpGet = { path: facts.readinessPath, port: 'http' }), /livenessProbe probes/],
      ['a probe on a path the server does not serve', ({ c }) => ((c.readinessProbe as Probe).httpGet = { path: '/ready', port: 'http' }), /not a route/],
      ['a probe on the wrong port', ({ c }) => ((c.startupProbe as Probe).httpGet = { path: facts.readinessPath, port: 9090 }), /not the server's port/],
      ['a stingy startup probe', ({ c }) => ((c.startupProbe as Probe).failureThreshold = 3), /startupProbe allows/],
      ['a short termination grace', ({ pod }) => (pod.terminationGracePeriodSeconds = 30), /terminationGracePeriodSeconds/],
      ['service links on', ({ pod }) => (pod.enableServiceLinks = true), /enableServiceLinks/],
      ['a writable root', ({ c }) => ((c.securityContext ?? {}).readOnlyRootFilesystem = false), /readOnlyRootFilesystem/],
      ['a different uid', ({ pod, c }) => ((pod.securityContext ?? {}).runAsUser = (c.securityContext ?? {}).runAsUser = 1000), /uid/],
      ['capabilities kept', ({ c }) => ((c.securityContext ?? {}).capabilities = { drop: ['NET_RAW'] }), /capabilities/],
      ['no GPU limit', ({ c }) => delete c.resources?.limits?.['nvidia.com/gpu'], /nvidia.com\/gpu/],
    ];
    for (const [name, mutate, expected] of rules) {
      const x = dep();
      mutate(x);
      const problems = deploymentProblems(x.copy, facts, overlay);
      t.ok(problems.some((p) => expected.test(p)), `break "${name}" is caught`, { problems });
    }
    const typo = dep();
    (typo.c as unknown as Record<string, unknown>)['readinesProbe'] = typo.c.readinessProbe;
    t.match(typeProblems(typo.copy).join('\n'), /readinesProbe/, 'break "a misspelt field" is caught by the type check');
    const wrongType = dep();
    (wrongType.pod as unknown as Record<string, unknown>)['terminationGracePeriodSeconds'] = 'forty';
    t.ok(schemaProblems(wrongType.copy).length > 0, 'break "a wrong type" is caught by the API schema');
    const sm = clone(docs);
    const monitor = sm.find((d) => d.kind === 'ServiceMonitor') as Doc & { spec: { endpoints: unknown } };
    monitor.spec.endpoints = 'http';
    t.ok(schemaProblems(sm).length > 0, 'break "a malformed ServiceMonitor" is caught by its CRD schema');
  });
}
