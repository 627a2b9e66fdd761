import { z } from 'zod';
import { DATATYPES } from '../../core/tensor-codec.js';
import { InferenceRequestSchema, ParametersSchema } from './request.js';

/**
 * Request and response schemas of the Open Inference Protocol (KServe v2) REST API, plus Triton's model
 * repository extension. Responses of the metadata and health endpoints are validated against them on the way
 * out; the inference response is written as text by response.ts (it can hold millions of numbers, and 64-bit
 * integers JSON.stringify cannot write) and its tests validate it here.
 */

export { InferenceRequestSchema };

export const ServerMetadataSchema = z
  .object({ name: z.string(), version: z.string(), extensions: z.array(z.string()) })
  .meta({ id: 'V2ServerMetadata' });

export const LiveSchema = z.object({ live: z.boolean() }).meta({ id: 'V2Live' });
export const ReadySchema = z.object({ ready: z.boolean() }).meta({ id: 'V2Ready' });
export const ModelReadySchema = z.object({ name: z.string(), ready: z.boolean() }).meta({ id: 'V2ModelReady' });

const MetadataTensorSchema = z.object({
  name: z.string(),
  datatype: z.enum(DATATYPES),
  shape: z.array(z.number().int().min(-1)),
  /** The image input of image models: `encoded_images: true`, `optional: true` (send it alone, in place of the tensors). */
  parameters: ParametersSchema.optional(),
});

const ConfigTensorSchema = z.object({
  name: z.string(),
  data_type: z.string(),
  dims: z.array(z.number().int().min(-1)),
  reshape: z.object({ shape: z.array(z.number().int()) }).optional(),
  optional: z.boolean().optional(),
});

/** The fields of Triton's model configuration (model_config.proto, in its JSON form) that Ocular fills in. */
export const ModelConfigSchema = z
  .object({
    name: z.string(),
    platform: z.string(),
    backend: z.string(),
    max_batch_size: z.number().int().min(0),
    input: z.array(ConfigTensorSchema),
    output: z.array(ConfigTensorSchema),
    dynamic_batching: z
      .object({
        max_queue_delay_microseconds: z.number().int().min(0),
        preserve_ordering: z.boolean(),
        default_queue_policy: z.object({
          timeout_action: z.literal('REJECT'),
          default_timeout_microseconds: z.number().int().min(0),
          allow_timeout_override: z.boolean(),
          max_queue_size: z.number().int().min(0),
        }),
      })
      .optional(),
    instance_group: z.array(z.object({ name: z.string(), kind: z.enum(['KIND_CPU', 'KIND_GPU']), count: z.number().int() })),
    model_transaction_policy: z.object({ decoupled: z.boolean() }),
    response_cache: z.object({ enable: z.boolean() }),
  })
  .meta({ id: 'V2ModelConfig' });

export const ModelMetadataSchema = z
  .object({
    name: z.string(),
    versions: z.array(z.string()).optional(),
    platform: z.string(),
    inputs: z.array(MetadataTensorSchema),
    outputs: z.array(MetadataTensorSchema),
  })
  .meta({ id: 'V2ModelMetadata' });

export const ResponseOutputSchema = z
  .object({
    name: z.string(),
    shape: z.array(z.number().int().min(0)),
    datatype: z.enum(DATATYPES),
    parameters: ParametersSchema.optional(),
    /** Absent when the output is binary (parameters.binary_data_size). */
    data: z.array(z.union([z.number(), z.boolean(), z.string()])).optional(),
  })
  .meta({ id: 'V2ResponseOutput' });

export const InferenceResponseSchema = z
  .object({
    model_name: z.string(),
    model_version: z.string().optional(),
    id: z.string().optional(),
    parameters: ParametersSchema.optional(),
    outputs: z.array(ResponseOutputSchema),
  })
  .meta({ id: 'V2InferenceResponse' });

export const ModelParamsSchema = z.object({ name: z.string().min(1).max(256) });
export const VersionParamsSchema = z.object({ name: z.string().min(1).max(256), version: z.string().min(1).max(64) });

export const RepositoryIndexRequestSchema = z.strictObject({ ready: z.boolean().optional() }).meta({ id: 'V2RepositoryIndexRequest' });
export const RepositoryIndexSchema = z
  .array(
    z.object({
      name: z.string(),
      version: z.string().optional(),
      state: z.enum(['LOADING', 'READY', 'UNAVAILABLE']).optional(),
      reason: z.string().optional(),
    }),
  )
  .meta({ id: 'V2RepositoryIndex' });
export const RepositoryLoadRequestSchema = z
  .strictObject({ parameters: ParametersSchema.optional() })
  .meta({ id: 'V2RepositoryLoadRequest' });
/**
 * A repository action's answer: `{}` (Triton's), and for a load `status`: `loaded` (a new version built and
 * serving) or `unchanged` (the model already served this entry and these file contents: nothing was done; the
 * load parameter `force: true` reloads anyway).
 */
export const RepositoryActionResponseSchema = z
  .object({ status: z.enum(['loaded', 'unchanged']).optional() })
  .meta({ id: 'V2RepositoryActionResponse' });
