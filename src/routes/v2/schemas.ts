import { z } from 'zod';
import { ERROR_CATALOG, type ErrorCode } from '../../errors.js';
import { DATATYPES } from '../../core/tensor-codec.js';
import { InferenceRequestSchema, ParametersSchema } from '../../core/infer-request.js';

/**
 * Request and response schemas of the Open Inference Protocol (KServe v2) REST API, plus Triton's model
 * repository extension. Responses of the metadata and health endpoints are validated against them on the way
 * out; the inference response is built by hand (it can hold millions of numbers) and tests validate it here.
 */

export { InferenceRequestSchema };

const codes = Object.keys(ERROR_CATALOG) as [ErrorCode, ...ErrorCode[]];

/** The protocol's `{ "error": "..." }`, plus the catalog's code. */
export const V2ErrorSchema = z.object({ error: z.string(), code: z.enum(codes) }).meta({ id: 'V2Error' });

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
});

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
