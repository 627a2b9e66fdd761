/**
 * k8s/kserve rendered with `kubectl kustomize`: the ServingRuntime, ClusterServingRuntime and InferenceService
 * against schemas of the KServe fields we use (kserve-schemas.ts, from KServe v0.20.0's CRDs) with their containers
 * and volumes against the Kubernetes API schema and types; then the runtime against what the server parses and
 * serves, and the example InferenceService against its storage: the fill Job writes the manifest beside the model,
 * with the files the manifest names relative to it. Serving from such a mount is kserve-mount.test.ts.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Container, Probe } from 'kubernetes-types/core/v1.js';
import t from 'tap';
import { parseManifest } from '../../src/config/manifest.js';
import { haveShared, modelPath } from '../helpers/shared.js';
import { type Doc, schemaProblems, typeProblems } from './k8s-validate.js';
import { type ServerFacts, configForEnv, kustomize, readServerFacts, repoPath } from './server-facts.js';

t.setTimeout(90_000);

/** KServe's model mount (constants.DefaultModelLocalMountPath). */
const MODEL_MOUNT = '/mnt/models';
/** The server's gRPC port until its option exists here (the gRPC transport, OCULAR_GRPC_PORT, default 8081). */
const GRPC_DEFAULT_PORT = 8081;

interface RuntimeSpec {
  supportedModelFormats: { name: string; version?: string; autoSelect?: boolean }[];
  protocolVersions: string[];
  multiModel?: boolean;
  containers: Container[];
  volumes?: { name: string; emptyDir?: object }[];
}
type RuntimeDoc = Doc & { spec: RuntimeSpec };
type IsvcDoc = Doc & {
  metadata: { annotations?: Record<string, string> };
  spec: {
    predictor: {
      terminationGracePeriodSeconds?: number;
      model: { runtime?: string; modelFormat: { name: string; version?: string }; protocolVersion?: string; storageUri?: string };
    };
  };
};
interface FillList {
  files: { path: string; url?: string; from?: string; sha256?: string }[];
}

const clone = <T>(v: T): T => structuredClone(v);
const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** Every rule the runtime's container follows; returns the problems. */
async function runtimeProblems(rt: RuntimeDoc, facts: ServerFacts): Promise<string[]> {
  const problems: string[] = [];
  const fail = (m: string) => problems.push(m);
  const what = `${rt.kind} ${rt.metadata.name}`;
  const onnx = rt.spec.supportedModelFormats.find((f) => f.name === 'onnx');
  if (onnx === undefined) fail(`${what}: does not declare modelFormat onnx`);
  // Ocular needs its manifest beside the model: never chosen for a bare ONNX model.
  else if (onnx.autoSelect !== false) fail(`${what}: onnx must not be auto-selected (a bare model has no manifest)`);
  for (const p of ['v2', 'grpc-v2']) if (!rt.spec.protocolVersions.includes(p)) fail(`${what}: protocol ${p} not declared`);
  if (rt.spec.multiModel !== false) fail(`${what}: multiModel must be false`);
  if (rt.spec.containers.length !== 1) fail(`${what}: expected one container`);
  const c = rt.spec.containers[0];
  if (c === undefined) return problems;
  if (c.name !== 'kserve-container') fail(`${what}: the container must be named kserve-container (KServe merges the model's fields into it)`);

  const env: Record<string, string> = {};
  for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  const config = configForEnv(env);
  if (!config.manifest.startsWith(`${MODEL_MOUNT}/`)) fail(`${what}: OCULAR_MANIFEST ${config.manifest} is not in KServe's model mount ${MODEL_MOUNT}`);
  // KServe routes the Service's port 80 to the first port, and marks ports named *grpc* or *h2c* as h2c.
  if (c.ports?.[0]?.containerPort !== config.port) fail(`${what}: the first port is not the server's port ${config.port}`);
  const grpcPort = 'grpcPort' in config ? (config as { grpcPort?: number }).grpcPort : Number(env['OCULAR_GRPC_PORT'] ?? GRPC_DEFAULT_PORT);
  const grpc = c.ports?.find((p) => /grpc|h2c/.test(p.name ?? ''));
  if (grpc === undefined || grpc.containerPort !== grpcPort) fail(`${what}: no port named grpc on the server's gRPC port ${grpcPort}`);
  const probePort = config.probePort;
  if (probePort === undefined) fail(`${what}: no probe listener (OCULAR_PROBE_PORT)`);
  if (c.ports?.some((p) => p.containerPort === probePort)) fail(`${what}: the probe port is declared, so KServe would expose it`);
  const ports = [config.port, grpcPort, probePort];
  if (new Set(ports).size !== ports.length) fail(`${what}: the HTTP, gRPC and probe ports collide: ${ports.join(', ')}`);

  // Kubernetes counts 200-399 as success: a readiness route must fail while the models load, a liveness one not.
  const probe = async (name: 'startupProbe' | 'readinessProbe' | 'livenessProbe', passesUnloaded: boolean) => {
    const p = c[name] as Probe | undefined;
    const path = p?.httpGet?.path ?? '';
    if (p?.httpGet === undefined) return fail(`${what} ${name}: no httpGet probe`);
    if (!facts.hasGet(path)) return fail(`${what} ${name}: ${path} is not a route the server registers`);
    if (p.httpGet.port !== probePort) fail(`${what} ${name}: port ${String(p.httpGet.port)} is not the server's probe port ${probePort}`);
    const got = await facts.statusWithoutModels(path);
    if ((got >= 200 && got < 400) !== passesUnloaded) fail(`${what} ${name}: ${path} answers ${got} before the models load, not a ${passesUnloaded ? 'liveness' : 'readiness'} route`);
  };
  await probe('startupProbe', false);
  await probe('readinessProbe', false);
  await probe('livenessProbe', true);
  const budget = (c.startupProbe?.periodSeconds ?? 10) * (c.startupProbe?.failureThreshold ?? 3);
  if (budget < 180) fail(`${what}: startupProbe allows ${budget}s for model loading; at least 180s`);
  const preStop = c.lifecycle?.preStop?.exec?.command ?? [];
  if (!(preStop[0] === 'sleep' && Number(preStop[1]) > 0)) fail(`${what}: no preStop pause`);

  const csc = c.securityContext ?? {};
  if (csc.runAsNonRoot !== true) fail(`${what}: runAsNonRoot is not set`);
  if (csc.readOnlyRootFilesystem !== true) fail(`${what}: readOnlyRootFilesystem is not true`);
  if (csc.allowPrivilegeEscalation !== false) fail(`${what}: allowPrivilegeEscalation is not false`);
  if (!csc.capabilities?.drop?.includes('ALL')) fail(`${what}: capabilities are not all dropped`);
  if (csc.seccompProfile?.type !== 'RuntimeDefault') fail(`${what}: seccomp profile is not RuntimeDefault`);
  for (const r of ['cpu', 'memory']) if (c.resources?.requests?.[r] === undefined || c.resources.limits?.[r] === undefined) fail(`${what}: no ${r} request and limit`);
  for (const path of ['/tmp', config.cacheDir]) {
    const m = c.volumeMounts?.find((v) => v.mountPath === path);
    if (m === undefined || m.readOnly === true || rt.spec.volumes?.find((v) => v.name === m.name)?.emptyDir === undefined) fail(`${what}: ${path} is not a writable emptyDir mount`);
  }
  return problems;
}

/** The example InferenceService against the runtime and its storage; returns the problems. */
function inferenceServiceProblems(docs: Doc[], rt: RuntimeDoc): string[] {
  const problems: string[] = [];
  const fail = (m: string) => problems.push(m);
  const isvc = docs.find((d) => d.kind === 'InferenceService') as IsvcDoc | undefined;
  if (isvc === undefined) return ['no InferenceService'];
  const model = isvc.spec.predictor.model;
  if (model.runtime !== rt.metadata.name) fail(`the InferenceService names runtime ${model.runtime}, not ${rt.metadata.name}`);
  if (!rt.spec.supportedModelFormats.some((f) => f.name === model.modelFormat.name && f.version === model.modelFormat.version)) fail(`modelFormat ${model.modelFormat.name} is not one the runtime supports`);
  if (!rt.spec.protocolVersions.includes(model.protocolVersion ?? '')) fail(`protocolVersion ${model.protocolVersion} is not one the runtime declares`);
  const mode = isvc.metadata.annotations?.['serving.kserve.io/deploymentMode'];
  if (mode !== 'RawDeployment' && mode !== 'Standard') fail(`deploymentMode ${mode}: two ports need Standard (RawDeployment)`);
  const env = Object.fromEntries((rt.spec.containers[0]?.env ?? []).map((e) => [e.name, e.value ?? '']));
  const config = configForEnv(env);
  const pause = Number(rt.spec.containers[0]?.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
  const grace = isvc.spec.predictor.terminationGracePeriodSeconds ?? 30;
  if (!(grace >= pause + Math.ceil(config.shutdownGraceMs / 1000) + 5)) fail(`terminationGracePeriodSeconds ${grace} < preStop + drain + 5 margin`);

  // The storage: pvc://<claim>/<folder>, the claim in this kustomization, the folder filled by the Job with the
  // manifest (at OCULAR_MANIFEST's name) beside every file it names.
  const m = /^pvc:\/\/([^/]+)\/(.+)$/.exec(model.storageUri ?? '');
  if (m === null) return [...problems, `storageUri ${model.storageUri} is not pvc://<claim>/<folder>`];
  const [, claim, folder] = m as unknown as [string, string, string];
  if (!docs.some((d) => d.kind === 'PersistentVolumeClaim' && d.metadata.name === claim)) fail(`storageUri names claim ${claim}, which is not here`);
  const job = docs.find((d) => d.kind === 'Job') as (Doc & { spec: { template: { spec: { volumes?: { persistentVolumeClaim?: { claimName: string } }[] } } } }) | undefined;
  if (!job?.spec.template.spec.volumes?.some((v) => v.persistentVolumeClaim?.claimName === claim)) fail(`no Job fills the claim ${claim}`);
  const lists = docs.filter((d) => d.kind === 'ConfigMap' && (d as { data?: Record<string, string> }).data?.['models.json'] !== undefined) as (Doc & { data: Record<string, string> })[];
  if (lists.length !== 1 || lists[0] === undefined) return [...problems, 'expected one fill list ConfigMap (models.json)'];
  const data = lists[0].data;
  const list = JSON.parse(data['models.json'] ?? '') as FillList;
  const manifestName = config.manifest.slice(MODEL_MOUNT.length + 1);
  const manifestEntry = list.files.find((f) => f.path === `${folder}/${manifestName}`);
  const manifestText = manifestEntry?.from === undefined ? undefined : data[manifestEntry.from.slice(manifestEntry.from.lastIndexOf('/') + 1)];
  if (manifestText === undefined) return [...problems, `the fill list does not write ${folder}/${manifestName} from the list's ConfigMap`];
  try {
    const manifest = parseManifest(JSON.parse(manifestText), 'KServe manifest');
    if (!manifest.models.some((x) => x.name === isvc.metadata.name)) fail(`the manifest serves no model named ${isvc.metadata.name} (the InferenceService's name)`);
    for (const entry of manifest.models) {
      const e = entry as unknown as Record<string, unknown>;
      for (const key of ['source', 'labels']) {
        const path = e[key];
        if (typeof path !== 'string') continue;
        if (path.startsWith('/') || path.includes('..') || /^[a-z]+:\/\//.test(path)) {
          fail(`manifest ${key} ${path} is not relative to the manifest's folder`);
          continue;
        }
        const listed = list.files.find((f) => f.path === `${folder}/${path}`);
        if (listed === undefined) fail(`the fill list does not write ${folder}/${path}, which the manifest names`);
        else if (key === 'source' && listed.sha256 !== e['sha256']) fail(`the fill list's sha256 for ${path} is not the manifest's`);
      }
    }
  } catch (err) {
    fail(`the manifest is invalid: ${(err as Error).message}`);
  }
  return problems;
}

const facts = await readServerFacts(t);
const docs = [...kustomize('k8s/kserve'), ...kustomize('k8s/kserve/cluster')] as Doc[];
const runtime = docs.find((d) => d.kind === 'ServingRuntime') as RuntimeDoc;
const clusterRuntime = docs.find((d) => d.kind === 'ClusterServingRuntime') as RuntimeDoc;

t.test('the KServe resources are valid against their CRDs\' schemas, and the rest against the API', async (t) => {
  t.same(docs.map((d) => d.kind).sort(), ['ClusterServingRuntime', 'ConfigMap', 'ConfigMap', 'InferenceService', 'Job', 'PersistentVolumeClaim', 'ServingRuntime'], 'the runtimes, the example and its storage');
  t.same(schemaProblems(docs), [], 'every document is valid against its schema');
  t.same(typeProblems(docs), [], 'every document type-checks (no unknown fields in containers, volumes, resources)');
  t.same(clusterRuntime.spec, runtime.spec, 'the ClusterServingRuntime\'s spec is the ServingRuntime\'s');
  t.equal(runtime.spec.containers[0]?.image, clusterRuntime.spec.containers[0]?.image, 'with the same image');
});

t.test('the runtime agrees with the server: ports, probes, manifest in the model mount, security', async (t) => {
  for (const rt of [runtime, clusterRuntime]) t.same(await runtimeProblems(rt, facts), [], `${rt.kind}: follows the rules`);
});

t.test('the example InferenceService serves the shared mobilenet from a manifest beside the model', async (t) => {
  t.same(inferenceServiceProblems(docs, runtime), [], 'runtime, format, protocol, mode, grace and storage agree');
  const list = JSON.parse(readFileSync(repoPath('k8s', 'kserve', 'models-fill.json'), 'utf8')) as FillList;
  for (const [file, shared] of [['model.onnx', modelPath('mobilenetv2-12-int8')], ['labels.txt', modelPath('mobilenetv2-12-int8', 'labels.txt')]] as const) {
    if (!haveShared(t, `models/mobilenetv2-12-int8/${file}`)) continue;
    t.equal(list.files.find((f) => f.path.endsWith(`/${file}`))?.sha256, sha256(shared), `the fill list's ${file} is the shared one, by sha256`);
  }
});

t.test('deliberate breaks are caught', async (t) => {
  const broken = (mutate: (docs: Doc[]) => void) => {
    const copy = clone(docs);
    mutate(copy);
    return copy;
  };
  const rt = (copy: Doc[]) => copy.find((d) => d.kind === 'ServingRuntime') as RuntimeDoc;
  const isvc = (copy: Doc[]) => copy.find((d) => d.kind === 'InferenceService') as IsvcDoc;
  const schemaBreaks: [string, (d: Doc[]) => void][] = [
    ['an unknown protocol', (d) => rt(d).spec.protocolVersions.push('v3')],
    ['a misspelt runtime field', (d) => ((rt(d).spec as unknown as Record<string, unknown>)['multimodel'] = false)],
    ['a model format without a name', (d) => delete (rt(d).spec.supportedModelFormats[0] as Partial<{ name: string }>).name],
    ['a misspelt model field', (d) => ((isvc(d).spec.predictor.model as unknown as Record<string, unknown>)['storageURI'] = 'pvc://x/y')],
    ['a wrong container type', (d) => ((rt(d).spec.containers[0] as unknown as Record<string, unknown>)['ports'] = 'http')],
  ];
  for (const [name, mutate] of schemaBreaks) t.ok(schemaProblems(broken(mutate)).length > 0, `break "${name}" is caught by the schema`);
  const typo = broken((d) => ((rt(d).spec.containers[0] as unknown as Record<string, unknown>)['readinesProbe'] = {}));
  t.match(typeProblems(typo).join('\n'), /readinesProbe/, 'break "a misspelt container field" is caught by the type check');

  const ruleBreaks: [string, (d: Doc[]) => void, RegExp][] = [
    ['auto-selected for bare ONNX', (d) => ((rt(d).spec.supportedModelFormats[0] as { autoSelect?: boolean }).autoSelect = true), /auto-selected/],
    ['no grpc-v2', (d) => (rt(d).spec.protocolVersions = ['v2']), /grpc-v2 not declared/],
    ['the manifest outside the mount', (d) => (rt(d).spec.containers[0]?.env?.forEach((e) => e.name === 'OCULAR_MANIFEST' && (e.value = '/etc/ocular/models.manifest.json'))), /model mount/],
    ['gRPC first', (d) => rt(d).spec.containers[0]?.ports?.reverse(), /first port/],
    ['the probe port exposed', (d) => rt(d).spec.containers[0]?.ports?.push({ name: 'probes', containerPort: 8082 }), /KServe would expose/],
    ['liveness on the readiness route', (d) => (((rt(d).spec.containers[0] as Container).livenessProbe as Probe).httpGet = { path: '/v2/health/ready', port: 8082 }), /livenessProbe: \/v2\/health\/ready answers \d+ before the models load, not a liveness route/],
    ['a writable root', (d) => ((rt(d).spec.containers[0]?.securityContext ?? {}).readOnlyRootFilesystem = false), /readOnlyRootFilesystem/],
  ];
  for (const [name, mutate, expected] of ruleBreaks) {
    const problems = await runtimeProblems(rt(broken(mutate)), facts);
    t.ok(problems.some((p) => expected.test(p)), `break "${name}" is caught`, { problems });
  }
  const isvcBreaks: [string, (d: Doc[]) => void, RegExp][] = [
    ['another runtime', (d) => (isvc(d).spec.predictor.model.runtime = 'kserve-tritonserver'), /names runtime/],
    ['Serverless mode', (d) => delete isvc(d).metadata.annotations?.['serving.kserve.io/deploymentMode'], /deploymentMode/],
    ['storage on another claim', (d) => (isvc(d).spec.predictor.model.storageUri = 'pvc://elsewhere/mobilenetv2'), /claim elsewhere/],
    ['storage in another folder', (d) => (isvc(d).spec.predictor.model.storageUri = 'pvc://ocular-models/resnet'), /does not write resnet\/models.manifest.json/],
    ['a name the manifest does not serve', (d) => (isvc(d).metadata.name = 'resnet50'), /no model named resnet50/],
  ];
  for (const [name, mutate, expected] of isvcBreaks) {
    const copy = broken(mutate);
    const problems = inferenceServiceProblems(copy, rt(copy));
    t.ok(problems.some((p) => expected.test(p)), `break "${name}" is caught`, { problems });
  }
});
