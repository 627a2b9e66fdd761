/**
 * JSON Schemas of the KServe fields that k8s/kserve uses, written by us from KServe's CRDs: kserve/kserve v0.20.0
 * (commit 1fb781055dd1567164358233e1125142ca6ef1fe), config/crd/full/serving.kserve.io_servingruntimes.yaml,
 * serving.kserve.io_clusterservingruntimes.yaml (the same spec) and serving.kserve.io_inferenceservices.yaml.
 * Types, required fields and bounds are the CRDs'; the protocol names are KServe's InferenceServiceProtocol
 * constants (pkg/constants/constants.go: v1, v2, grpc-v1, grpc-v2), which the CRD leaves as plain strings.
 *
 * Where the CRD has more fields than we use, the schema lists only ours with `additionalProperties: false`: a
 * misspelt field (which the API server would silently prune) fails here, and using a new field means adding it
 * here from the CRD. Containers and volumes inside are core/v1 types: the caller validates those against the
 * Kubernetes API schema (kubernetes-models) and kubernetes-types.
 */
const stringMap = { type: 'object', additionalProperties: { type: 'string' } } as const;
const int32 = { type: 'integer', minimum: -2147483648, maximum: 2147483647 } as const;
const protocol = { type: 'string', enum: ['v1', 'v2', 'grpc-v1', 'grpc-v2'] } as const;

const metadata = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string', minLength: 1 }, namespace: { type: 'string' }, labels: stringMap, annotations: stringMap },
  additionalProperties: false,
} as const;

/** ServingRuntimeSpec (and ClusterServingRuntime's, the same type). */
const servingRuntimeSpec = {
  type: 'object',
  required: ['containers'],
  properties: {
    annotations: stringMap,
    supportedModelFormats: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name'],
        properties: { name: { type: 'string' }, version: { type: 'string' }, autoSelect: { type: 'boolean' }, priority: { ...int32, minimum: 1 } },
        additionalProperties: false,
      },
    },
    protocolVersions: { type: 'array', items: protocol },
    multiModel: { type: 'boolean' },
    disabled: { type: 'boolean' },
    containers: { type: 'array', minItems: 1, items: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } },
    volumes: { type: 'array', items: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } },
  },
  additionalProperties: false,
} as const;

const runtime = (kind: string) =>
  ({
    type: 'object',
    required: ['apiVersion', 'kind', 'metadata', 'spec'],
    properties: { apiVersion: { const: 'serving.kserve.io/v1alpha1' }, kind: { const: kind }, metadata, spec: servingRuntimeSpec },
    additionalProperties: false,
  }) as const;

/** InferenceService v1beta1: the predictor's replica bounds, grace, and model (ModelSpec: a Container plus these). */
const inferenceService = {
  type: 'object',
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  properties: {
    apiVersion: { const: 'serving.kserve.io/v1beta1' },
    kind: { const: 'InferenceService' },
    metadata,
    spec: {
      type: 'object',
      required: ['predictor'],
      properties: {
        predictor: {
          type: 'object',
          properties: {
            minReplicas: int32,
            maxReplicas: int32,
            terminationGracePeriodSeconds: { type: 'integer' },
            model: {
              type: 'object',
              required: ['modelFormat'],
              properties: {
                modelFormat: {
                  type: 'object',
                  required: ['name'],
                  properties: { name: { type: 'string' }, version: { type: 'string' } },
                  additionalProperties: false,
                },
                runtime: { type: 'string' },
                runtimeVersion: { type: 'string' },
                protocolVersion: protocol,
                storageUri: { type: 'string' },
                resources: { type: 'object' },
              },
              additionalProperties: false,
            },
          },
          additionalProperties: false,
        },
      },
      additionalProperties: false,
    },
  },
  additionalProperties: false,
} as const;

export const KSERVE_SCHEMAS: Record<string, object> = {
  'serving.kserve.io/v1alpha1/ServingRuntime': runtime('ServingRuntime'),
  'serving.kserve.io/v1alpha1/ClusterServingRuntime': runtime('ClusterServingRuntime'),
  'serving.kserve.io/v1beta1/InferenceService': inferenceService,
};
