import { z } from 'zod';
import { ErrorBodySchema } from '../errors.js';

/** Response and parameter schemas of the public HTTP API: the contract the OpenAPI document is generated from. */

export const ModelParamsSchema = z.object({
  name: z.string().min(1).max(256),
});

/**
 * Every query parameter any task takes; the model's task then refuses those it does not take. Strict: a parameter
 * no task takes (a misspelt `score_treshold`) is 400, never silently dropped.
 */
/**
 * The query of a predict request: every task's keys, each bounded. Loose: which keys a model accepts is its task's
 * (the pipeline's paramsSchema, checked in the handler), so an unknown key is answered with that task's valid keys.
 */
export const PredictQuerySchema = z.looseObject({
  top_k: z.string().max(16).optional().describe('classification: how many classes to return'),
  score_threshold: z.string().max(32).optional().describe('detection: minimum score, 0..1'),
  iou_threshold: z.string().max(32).optional().describe('detection: NMS IoU threshold, 0..1'),
  max_detections: z.string().max(16).optional().describe('detection: most detections to return'),
  classes: z.string().max(4096).optional().describe('detection, segmentation: comma-separated labels or class indices to keep'),
  min_area: z.string().max(16).optional().describe('segmentation: classes covering fewer pixels are left out'),
  format: z
    .string()
    .max(8)
    .optional()
    .describe('segmentation: rle (JSON, a COCO RLE mask per class; default) or png (the class map as a single-channel PNG, pixel = class index)'),
});

const BoxSchema = z.object({ x1: z.number(), y1: z.number(), x2: z.number(), y2: z.number() });
const PointSchema = z.tuple([z.number(), z.number()]);

const ImageResultBase = {
  model: z.string(),
  version: z.string(),
  width: z.number().int(),
  height: z.number().int(),
};

export const ClassificationResultSchema = z
  .object({
    ...ImageResultBase,
    predictions: z.array(z.object({ label: z.string(), index: z.number().int(), score: z.number() })),
  })
  .meta({ id: 'ClassificationResult' });

export const DetectionResultSchema = z
  .object({
    ...ImageResultBase,
    detections: z.array(z.object({ label: z.string(), index: z.number().int(), score: z.number(), box: BoxSchema })),
  })
  .meta({ id: 'DetectionResult' });

export const OcrResultSchema = z
  .object({
    ...ImageResultBase,
    lines: z.array(
      z.object({
        text: z.string(),
        score: z.number(),
        polygon: z.array(PointSchema).length(4),
        box: BoxSchema,
      }),
    ),
  })
  .meta({ id: 'OcrResult' });

/** A COCO RLE mask as pycocotools reads it: size [height, width], counts its compressed string (column-major runs). */
const RleSchema = z
  .object({ size: z.tuple([z.number().int(), z.number().int()]), counts: z.string() })
  .describe("COCO run-length encoding, pycocotools' compressed string form: pycocotools.mask.decode(mask) gives the H x W mask");

export const SegmentationResultSchema = z
  .object({
    ...ImageResultBase,
    classes: z.array(
      z.object({
        label: z.string(),
        index: z.number().int(),
        area: z.number().int().describe('pixels of the class at the original (EXIF-upright) size'),
        fraction: z.number().describe('area / (width * height)'),
        box: BoxSchema.describe('box of the class pixels, x2 and y2 exclusive'),
        mask: RleSchema.optional().describe('the class mask, COCO RLE (in every JSON answer; the PNG answer carries no JSON)'),
      }),
    ),
  })
  .meta({ id: 'SegmentationResult' });

export const PredictResultSchema = z.union([ClassificationResultSchema, DetectionResultSchema, SegmentationResultSchema, OcrResultSchema]);

/** One slot of a multipart answer: the file's result without model/version, or its error. */
const SlotSchema = z.union([
  ClassificationResultSchema.omit({ model: true, version: true }),
  DetectionResultSchema.omit({ model: true, version: true }),
  SegmentationResultSchema.omit({ model: true, version: true }),
  OcrResultSchema.omit({ model: true, version: true }),
  z.object({ error: ErrorBodySchema }),
]);

export const MultipartResultSchema = z
  .object({ model: z.string(), version: z.string(), results: z.array(SlotSchema) })
  .meta({ id: 'MultipartResult' });

const TensorMetaSchema = z.object({
  name: z.string(),
  type: z.string(),
  shape: z.array(z.number().int()),
  symbolicShape: z.array(z.string()),
});

export const ModelDescriptionSchema = z
  .object({
    name: z.string(),
    version: z.string(),
    task: z.string(),
    state: z.enum(['LOADING', 'READY', 'UNAVAILABLE']),
    reason: z.string().optional(),
    provider: z.string().optional(),
    loadSeconds: z.number().optional(),
    stages: z.array(
      z.object({
        stage: z.string(),
        provider: z.string(),
        requestedProviders: z.array(z.string()),
        fallbackReason: z.string().optional(),
        nodeCounts: z.record(z.string(), z.number()),
        instances: z.number().int(),
        shapes: z
          .object({
            perSession: z.array(z.number().int()).meta({ description: 'distinct input shapes (dims, batch included) each session has run' }),
            bound: z.number().int().optional().meta({ description: "the most the stage's batching policy allows; absent where the clients' sizes decide" }),
          })
          .meta({ description: 'input shapes run per session: few shapes keep a GPU session warm' }),
        uint8Input: z.boolean().meta({ description: 'images reach the session as uint8 pixels, normalised by a prefix in its graph' }),
        memoryArena: z.boolean().meta({ description: "the sessions keep onnxruntime's CPU memory arena (manifest memoryArena)" }),
        inputs: z.array(TensorMetaSchema),
        outputs: z.array(TensorMetaSchema),
        batching: z.object({
          maxBatchSize: z.number().int().meta({ description: "the manifest's upper bound" }),
          batchLimit: z
            .number()
            .int()
            .meta({ description: 'the largest batch formed: maxBatchSize, or the size warm-up tuning chose' }),
          maxQueueDelayMs: z.number(),
          maxQueueSize: z.number().int(),
          timeoutMs: z.number(),
          tune: z.enum(['cpu', 'always', 'off']),
          padBatches: z.enum(['gpu', 'always', 'off']),
          padded: z.boolean().meta({ description: 'every run is padded to batchLimit rows: one input shape' }),
          buckets: z
            .object({ widths: z.array(z.number().int()), heights: z.array(z.number().int()) })
            .optional()
            .meta({ description: 'the size buckets batches run at (every width with every height), where they apply' }),
          shapeBound: z
            .number()
            .int()
            .optional()
            .meta({ description: 'the most distinct input shapes (batch included) image batches can run; absent: unbounded' }),
          tuning: z
            .object({
              tolerance: z.number(),
              perImageMs: z.array(z.object({ size: z.number().int(), ms: z.number() })),
            })
            .optional()
            .meta({ description: 'per-image time of one batch at each size tried at warm-up, when tuned' }),
        }),
      }),
    ),
  })
  .meta({ id: 'Model' });

export const ModelListSchema = z.object({ models: z.array(ModelDescriptionSchema) });

export const ReadinessSchema = z.object({
  status: z.enum(['ready', 'not_ready', 'draining']),
  /** Why not ready, in one line. */
  reason: z.string().optional(),
  models: z.array(
    z.object({
      name: z.string(),
      version: z.string(),
      state: z.enum(['LOADING', 'READY', 'UNAVAILABLE']),
      provider: z.string().optional(),
      reason: z.string().optional(),
      /** Unloaded by an operator (repository API, OCULAR_MODEL_CONTROL=explicit): not counted against readiness. */
      unloadedOnPurpose: z.boolean().optional(),
    }),
  ),
});

export const LivenessSchema = z.object({ status: z.literal('ok') });
