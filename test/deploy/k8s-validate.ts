/**
 * Validation of rendered Kubernetes documents, shared by the plain manifests' and KServe's tests: each document
 * against its API schema (kubernetes-models; the operators' CRDs through @kubernetes-models/prometheus-operator and
 * @kubernetes-models/keda; KServe's through kserve-schemas.ts, with the core/v1 containers and volumes inside them
 * against kubernetes-models), then type-checked as an object literal of its TypeScript type so that a misspelt or
 * unknown field is an excess-property error.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { Ajv } from 'ajv';
import { ConfigMap, Container, PersistentVolumeClaim, Service, Volume } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { Job } from 'kubernetes-models/batch/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import ts from 'typescript';
import { KSERVE_SCHEMAS } from './kserve-schemas.js';
import { repoRoot } from './server-facts.js';

export type Doc = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> } };

type Validatable = new (data: never) => { validate(): void };

const MODELS: Record<string, Validatable> = {
  'apps/v1/Deployment': Deployment,
  'batch/v1/Job': Job,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
};

/** Type (and the module it comes from) per kind for the type check; KServe's are declared in the checked file. */
const TYPES: Record<string, [string, string | undefined]> = {
  'apps/v1/Deployment': ['Deployment', 'kubernetes-types/apps/v1.js'],
  'batch/v1/Job': ['Job', 'kubernetes-types/batch/v1.js'],
  'v1/Service': ['Service', 'kubernetes-types/core/v1.js'],
  'v1/ConfigMap': ['ConfigMap', 'kubernetes-types/core/v1.js'],
  'v1/PersistentVolumeClaim': ['PersistentVolumeClaim', 'kubernetes-types/core/v1.js'],
  'policy/v1/PodDisruptionBudget': ['PodDisruptionBudget', 'kubernetes-types/policy/v1.js'],
  'autoscaling/v2/HorizontalPodAutoscaler': ['HorizontalPodAutoscaler', 'kubernetes-types/autoscaling/v2.js'],
  'monitoring.coreos.com/v1/ServiceMonitor': ['IServiceMonitor', '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'],
  'keda.sh/v1alpha1/ScaledObject': ['IScaledObject', '@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject'],
  'serving.kserve.io/v1alpha1/ServingRuntime': ['KServeRuntime', undefined],
  'serving.kserve.io/v1alpha1/ClusterServingRuntime': ['KServeRuntime', undefined],
  'serving.kserve.io/v1beta1/InferenceService': ['KServeInferenceService', undefined],
};

/**
 * KServe's resources as far as the type check goes: the KServe fields are the JSON Schema's business; the core/v1
 * parts (containers, volumes, a model's resources) get kubernetes-types' excess-property check.
 */
const KSERVE_TYPES = `
type KServeRuntime = { apiVersion: string; kind: string; metadata: ObjectMeta;
  spec: { containers: Container[]; volumes?: Volume[]; [field: string]: unknown } };
type KServeInferenceService = { apiVersion: string; kind: string; metadata: ObjectMeta;
  spec: { predictor: { model?: { resources?: ResourceRequirements; [field: string]: unknown }; [field: string]: unknown } } };
`;

export const keyOf = (d: Doc) => `${d.apiVersion}/${d.kind}`;
const clone = <T>(v: T): T => structuredClone(v);

const ajv = new Ajv({ allErrors: true, strict: true });
const kserveValidators = new Map(Object.entries(KSERVE_SCHEMAS).map(([k, schema]) => [k, ajv.compile(schema)]));

function modelProblem(Model: Validatable, value: unknown, where: string): string | undefined {
  try {
    new Model(clone(value) as never).validate();
    return undefined;
  } catch (err) {
    return `${where}: ${(err as Error).message}`;
  }
}

/** Schema validation; returns the problems. */
export function schemaProblems(docs: Doc[]): string[] {
  const problems: string[] = [];
  for (const d of docs) {
    const where = `${d.kind} ${d.metadata.name}`;
    const kserve = kserveValidators.get(keyOf(d));
    if (kserve !== undefined) {
      if (!kserve(d)) problems.push(`${where}: ${ajv.errorsText(kserve.errors)}`);
      const spec = (d['spec'] ?? {}) as { containers?: unknown[]; volumes?: unknown[] };
      for (const c of spec.containers ?? []) problems.push(...[modelProblem(Container, c, `${where} container`)].filter((p) => p !== undefined));
      for (const v of spec.volumes ?? []) problems.push(...[modelProblem(Volume, v, `${where} volume`)].filter((p) => p !== undefined));
      continue;
    }
    const Model = MODELS[keyOf(d)];
    if (Model === undefined) {
      problems.push(`${keyOf(d)} ${d.metadata.name}: no schema known for this kind`);
      continue;
    }
    const problem = modelProblem(Model, d, where);
    if (problem !== undefined) problems.push(problem);
  }
  return problems;
}

/**
 * Type-checks the documents as object literals of their types. The file is written inside the repository so
 * that module resolution finds node_modules; it is removed afterwards.
 */
export function typeProblems(docs: Doc[]): string[] {
  const dir = mkdtempSync(join(repoRoot, '.tmp-k8s-types-'));
  try {
    const imports = new Map<string, Set<string>>([['kubernetes-types/core/v1.js', new Set(['Container', 'Volume', 'ResourceRequirements'])]]);
    imports.set('kubernetes-types/meta/v1.js', new Set(['ObjectMeta']));
    const lines: string[] = [];
    docs.forEach((d, i) => {
      const type = TYPES[keyOf(d)];
      if (type === undefined) return;
      if (type[1] !== undefined) imports.set(type[1], (imports.get(type[1]) ?? new Set()).add(type[0]));
      lines.push(`// ${d.kind} ${d.metadata.name}\nexport const doc${i}: ${type[0]} = ${JSON.stringify(d, null, 2)};`);
    });
    const head = [...imports].map(([mod, names]) => `import type { ${[...names].join(', ')} } from '${mod}';`);
    const file = join(dir, 'docs.ts');
    writeFileSync(file, `${head.join('\n')}\n${KSERVE_TYPES}\n${lines.join('\n')}\n`);
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      noUnusedLocals: false,
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
