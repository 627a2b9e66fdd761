import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { InputSpecSchema } from './input-spec.js';
import { PROVIDER_NAMES } from './providers.js';

/**
 * The model manifest: which models to serve and everything about them that is data, not code. Validated by zod
 * here; checked against each model's own input/output metadata after loading (core/model-check.ts).
 * Paths (model sources, label files) are absolute or relative to the manifest's folder: the mounted-volume case.
 */

const ProviderSchema = z.enum(PROVIDER_NAMES);
const NameSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be 1-63 of a-z 0-9 . _ - starting with a letter or digit');
const Sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits');

/**
 * Where a model file comes from: a path (absolute or relative to the manifest) or an http(s):// URL, which is
 * downloaded once into the cache dir and must carry a sha256. Whether http:// may be used is the server's
 * decision (OCULAR_ALLOW_HTTP_SOURCES, checked when the model loads), not the manifest's: the schema accepts both.
 */
const SourceSchema = z
  .string()
  .min(1)
  .refine((s) => !/^[a-z][a-z0-9+.-]*:\/\//i.test(s) || s.startsWith('https://') || s.startsWith('http://'), {
    message: 'a URL source must be https:// (or http:// where OCULAR_ALLOW_HTTP_SOURCES allows it)',
  });

export const BatchingSchema = z.strictObject({
  /** Largest batch. Models whose batch dimension is fixed at 1 run one request at a time whatever this says. */
  maxBatchSize: z.number().int().min(1).max(1024).default(8),
  /** 0: work-conserving, an idle runner takes whatever is queued. >0: wait up to this long for a fuller batch. */
  maxQueueDelayMs: z.number().min(0).max(60_000).default(0),
  /** Requests waiting (not running) past which new ones get 503 QUEUE_FULL. */
  maxQueueSize: z.number().int().min(1).max(1_000_000).default(64),
  /** Time a request may wait in the queue before 503 QUEUE_TIMEOUT; default: OCULAR_REQUEST_TIMEOUT_MS. */
  timeoutMs: z.number().int().positive().optional(),
  /**
   * Batch-size tuning at warm-up, for stages of one fixed input size: each size 1, 2, 4, ... up to maxBatchSize is
   * timed and batches are capped at the smallest size within 15 % (CPU provider; 5 % others) of the cheapest per image. 'cpu': only on the CPU
   * provider, where larger batches are often slower per image; 'always': on every provider; 'off': batches up to
   * maxBatchSize.
   */
  tune: z.enum(['cpu', 'always', 'off']).default('cpu'),
  /**
   * Every run at one batch shape, for stages of one fixed input size: a batch of fewer requests than the batch
   * limit is padded to the limit, and the padding rows' outputs are dropped. 'gpu': when the session runs on a GPU
   * provider with at least half of its nodes there, since onnxruntime's CUDA provider rebuilds its convolution plans
   * whenever the input shape changes (seconds per change on an H200, docs/PERFORMANCE.md); 'always'; 'off'.
   */
  padBatches: z.enum(['gpu', 'always', 'off']).default('gpu'),
});

/** One ONNX session: a model file, how images become its input, and how it is batched and placed. */
const StageFields = {
  source: SourceSchema,
  sha256: Sha256Schema.optional(),
  /** Cap on a URL download, bytes. */
  maxDownloadBytes: z
    .number()
    .int()
    .positive()
    .default(2 * 1024 ** 3),
  input: InputSpecSchema,
  batching: BatchingSchema.default(BatchingSchema.parse({})),
  /**
   * Worker threads, one session each (default 1). `auto`: two on the CPU provider where the CPUs hold two
   * sessions' intra-op threads, one on a GPU provider (core/runner/providers.ts, resolveInstances).
   */
  instances: z.union([z.literal('auto'), z.number().int().min(1).max(64)]).default(1),
  /** Execution providers for this model, overriding the server's. */
  providers: z.array(ProviderSchema).min(1).optional(),
  /**
   * onnxruntime's CPU memory arena for this stage's sessions (its session option enableCpuMemArena). The arena keeps
   * what the largest run allocated until the session is closed. `auto` (default): off where the stage serves raw
   * tensors (`/v2`, gRPC) and its model takes an input of a size the client chooses (a dynamic dimension other than
   * the batch), so that one huge request does not hold its memory for good; on elsewhere. `on`, `off`.
   */
  memoryArena: z.enum(['auto', 'on', 'off']).default('auto'),
};

/**
 * A labels file (one label per line, line i = class i): a path (absolute or relative to the manifest) or an https://
 * URL, downloaded and cached as model sources are, which must then carry `labelsSha256`. Where the task allows it
 * (classification, detection, segmentation) it may be left out when the model carries its class names in its ONNX
 * metadata (Ultralytics' `names`: tasks/labels.ts).
 */
const LabelsSchema = SourceSchema;
const LabelsFields = {
  labels: LabelsSchema.optional(),
  labelsSha256: Sha256Schema.optional(),
};

const ClassificationSchema = z.strictObject({
  name: NameSchema,
  version: z.string().min(1).max(64).default('1'),
  task: z.literal('image-classification'),
  ...StageFields,
  ...LabelsFields,
  /** Output tensor to read; default: the model's only output. */
  output: z.string().min(1).optional(),
  options: z
    .strictObject({
      topK: z.number().int().min(1).max(1000).default(5),
      /** auto: softmax when the output is not already a probability distribution (logits). */
      softmax: z.enum(['auto', 'always', 'never']).default('auto'),
    })
    .default({ topK: 5, softmax: 'auto' }),
});

const DetectionOptionsSchema = z.strictObject({
  scoreThreshold: z.number().min(0).max(1).default(0.3),
  iouThreshold: z.number().min(0).max(1).default(0.45),
  maxDetections: z.number().int().min(1).max(10_000).default(100),
  classAgnostic: z.boolean().default(false),
});

/** Candidates of an end-to-end head are already suppressed; `nms: true` runs Ocular's NMS on them again. */
const secondNms = z.boolean().default(false);

/**
 * How a detector's outputs read (docs/MANIFEST.md names the export that produces each). Boxes in input pixels
 * unless said otherwise; every head's boxes go back through the resize to original-image pixels.
 */
export const DetectionHeadSchema = z.discriminatedUnion('type', [
  /** YOLOX raw head: [N, anchors, 5 + classes], obj and cls sigmoid-ed, grids of `strides`. */
  z.strictObject({
    type: z.literal('yolox'),
    output: z.string().min(1).optional(),
    strides: z.array(z.number().int().positive()).min(1).default([8, 16, 32]),
  }),
  /** SSD-style: scores [N, anchors, classes] (softmax-ed) and boxes [N, anchors, 4] x1y1x2y2 normalised 0..1. */
  z.strictObject({
    type: z.literal('ssd'),
    scoresOutput: z.string().min(1).default('scores'),
    boxesOutput: z.string().min(1).default('boxes'),
  }),
  /**
   * Ultralytics YOLOv8 / YOLO11 / YOLOv9: [N, 4 + C, A] ('channels-first', the export's own) or [N, A, 4 + C]
   * ('anchors-first'): cx, cy, w, h, then C class scores, no objectness. 'auto' decides from C at startup.
   */
  z.strictObject({
    type: z.literal('ultralytics'),
    output: z.string().min(1).optional(),
    layout: z.enum(['auto', 'channels-first', 'anchors-first']).default('auto'),
  }),
  /** YOLOv5 / YOLOv7: [N, A, 5 + C], cx, cy, w, h, objectness, C class scores; score = objectness · class. */
  z.strictObject({
    type: z.literal('yolov5'),
    output: z.string().min(1).optional(),
  }),
  /** End-to-end (YOLOv10, Ultralytics nms=True): [N, K, 6] x1, y1, x2, y2, score, class; zero rows are padding. */
  z.strictObject({
    type: z.literal('end2end'),
    output: z.string().min(1).optional(),
    nms: secondNms,
  }),
  /**
   * End-to-end, one output each: boxes [N, K, 4], scores [N, K], classes [N, K], optional count [N] (TensorFlow's
   * num_detections). Defaults fit torchvision (xyxy input pixels, classes from 0); TensorFlow's object detection
   * exports: boxFormat 'yxyx', normalized true, classOffset 1.
   */
  z.strictObject({
    type: z.literal('boxes-scores-classes'),
    boxesOutput: z.string().min(1).default('boxes'),
    scoresOutput: z.string().min(1).default('scores'),
    /** Default: the output named "classes" or "labels". */
    classesOutput: z.string().min(1).optional(),
    countOutput: z.string().min(1).optional(),
    boxFormat: z.enum(['xyxy', 'yxyx']).default('xyxy'),
    /** Boxes as fractions (0..1) of the input's width and height, not pixels. */
    normalized: z.boolean().default(false),
    /** Subtracted from each class the model gives before it indexes the labels (TensorFlow's COCO ids start at 1). */
    classOffset: z.number().int().min(-1000).max(1000).default(0),
    nms: secondNms,
  }),
  /**
   * RT-DETR / DETR: [N, Q, 4 + C] (`output`), or `boxesOutput` [N, Q, 4] with `logitsOutput` [N, Q, C]: boxes cx,
   * cy, w, h normalised 0..1; class logits, 'sigmoid' (RT-DETR: each query and class a candidate) or 'softmax' (DETR:
   * C + 1 columns, the last "no object"; each query its best class); or 'probabilities', read as they are
   * (Ultralytics' RT-DETR export applies the sigmoid in its graph).
   */
  z.strictObject({
    type: z.literal('detr'),
    output: z.string().min(1).optional(),
    boxesOutput: z.string().min(1).optional(),
    logitsOutput: z.string().min(1).optional(),
    scores: z.enum(['sigmoid', 'softmax', 'probabilities']).default('sigmoid'),
    nms: secondNms,
  }),
]);

export type DetectionHead = z.infer<typeof DetectionHeadSchema>;

const DetectionSchema = z.strictObject({
  name: NameSchema,
  version: z.string().min(1).max(64).default('1'),
  task: z.literal('object-detection'),
  ...StageFields,
  ...LabelsFields,
  head: DetectionHeadSchema,
  options: DetectionOptionsSchema.default(DetectionOptionsSchema.parse({})),
});

const SegmentationOptionsSchema = z.strictObject({
  /**
   * How the class map reaches the original image's size: 'nearest' takes each pixel's class from the model's class
   * map (argmax at the output's size; cheap); 'bilinear' interpolates the logits at the original size, then takes
   * the argmax (smoother edges, about C times the work). A class-map output is always 'nearest'.
   */
  upsample: z.enum(['nearest', 'bilinear']).default('nearest'),
  /** Classes covering fewer pixels (at the original size) are left out; a request's min_area overrides it. */
  minArea: z.number().int().min(0).default(0),
});

/**
 * Semantic segmentation: one class per pixel. The output is per-class logits ([N,H,W,C] for NHWC, [N,C,H,W] for
 * NCHW; C = lines of the labels file) or a class map ([N,H,W] or [N,1,H,W] of class indices); H and W need not be
 * the input's.
 */
const SegmentationSchema = z.strictObject({
  name: NameSchema,
  version: z.string().min(1).max(64).default('1'),
  task: z.literal('semantic-segmentation'),
  ...StageFields,
  ...LabelsFields,
  output: z
    .strictObject({
      /** Output tensor to read; default: the model's only output. */
      name: z.string().min(1).optional(),
      layout: z.enum(['NHWC', 'NCHW', 'class-map']).default('NCHW'),
    })
    .default({ layout: 'NCHW' }),
  options: SegmentationOptionsSchema.default(SegmentationOptionsSchema.parse({})),
});

const OcrOptionsSchema = z.strictObject({
  binaryThreshold: z.number().min(0).max(1).default(0.3),
  boxThreshold: z.number().min(0).max(1).default(0.6),
  unclipRatio: z.number().positive().max(10).default(1.5),
  maxCandidates: z.number().int().min(1).max(10_000).default(1000),
  /** Lines whose recognition score is below this are left out. */
  minTextScore: z.number().min(0).max(1).default(0.5),
});

/** Strictly ascending, so that the smallest bucket holding an item is the first that does. */
const ascending = (sides: readonly number[]): boolean => sides.every((s, i) => i === 0 || s > (sides[i - 1] as number));

/**
 * GPU-ready OCR: the detector's input sizes and the recogniser's crop widths run at a few fixed sizes (buckets), so a
 * session sees a bounded set of input shapes whatever the photos. 'gpu' (default): on a stage whose session runs
 * mostly on a GPU provider, as padBatches (onnxruntime's CUDA provider re-plans its convolutions for every new input
 * shape); 'always'; 'off'. On the CPU provider buckets cost the padding's compute and save nothing measurable
 * (docs/PERFORMANCE.md, "OCR size buckets").
 */
const ShapeBucketsSchema = z.strictObject({
  mode: z.enum(['gpu', 'always', 'off']).default('gpu'),
  /**
   * Detector bucket sides (each used as a width and as a height: every pair is a bucket), multiples of 32, ascending;
   * the largest must hold the largest limit-round32 side. Default: the sides a 16:9, a 4:3 and a square photo get
   * ([544, 704, 960] for limitSideLen 960). Buckets need limitType 'max' (with 'min' sizes have no upper bound).
   */
  detectorSides: z
    .array(z.number().int().min(32).max(16384).multipleOf(32))
    .min(1)
    .max(8)
    .refine(ascending, 'must be ascending')
    .optional(),
  /**
   * Recogniser bucket widths, ascending; the largest must be at least recognizer.input.width (the widest crop).
   * Default: 320 (every batch is at least that wide, as in PaddleOCR), then 1/2, 2/3 and all of the widest crop,
   * rounded up to multiples of 8 ([320, 480, 640, 960]).
   */
  recognizerWidths: z
    .array(z.number().int().min(8).max(16384))
    .min(1)
    .max(16)
    .refine(ascending, 'must be ascending')
    .optional(),
});

const OcrSchema = z.strictObject({
  name: NameSchema,
  version: z.string().min(1).max(64).default('1'),
  task: z.literal('ocr'),
  /** Text detector (DB probability map); input.resize is normally limit-round32, width/height its warm-up size. */
  detector: z.strictObject({ ...StageFields }),
  /**
   * Line recogniser (CTC). input.height is the line height (48); input.width is the widest crop, in pixels:
   * wider lines are squeezed to it. Crops in one batch are padded to the batch's widest.
   */
  recognizer: z.strictObject({ ...StageFields, labels: LabelsSchema, labelsSha256: Sha256Schema.optional() }),
  options: OcrOptionsSchema.default(OcrOptionsSchema.parse({})),
  shapeBuckets: ShapeBucketsSchema.default(ShapeBucketsSchema.parse({})),
});

/**
 * A model served as raw tensors, with no pre- or post-processing: reachable through the v2 (Open Inference
 * Protocol) API only. `warmupShapes` gives the shape of each input for the warm-up run where the model's own
 * dims are dynamic beyond the batch (a dynamic batch dim is warmed up at 1 and at maxBatchSize).
 */
const TensorSchema = z.strictObject({
  name: NameSchema,
  version: z.string().min(1).max(64).default('1'),
  task: z.literal('tensor'),
  source: StageFields.source,
  sha256: StageFields.sha256,
  maxDownloadBytes: StageFields.maxDownloadBytes,
  batching: StageFields.batching,
  instances: StageFields.instances,
  providers: StageFields.providers,
  memoryArena: StageFields.memoryArena,
  warmupShapes: z.record(z.string(), z.array(z.number().int().positive()).min(1).max(16)).optional(),
});

export const ModelEntrySchema = z.discriminatedUnion('task', [
  ClassificationSchema,
  DetectionSchema,
  SegmentationSchema,
  OcrSchema,
  TensorSchema,
]);

export const ManifestSchema = z
  .strictObject({
    $schema: z.string().optional(),
    models: z.array(ModelEntrySchema).min(1, 'the manifest lists no model'),
  })
  .superRefine((m, ctx) => {
    const seen = new Set<string>();
    m.models.forEach((model, i) => {
      if (seen.has(model.name)) {
        ctx.addIssue({ code: 'custom', path: ['models', i, 'name'], message: `duplicate model name "${model.name}"` });
      }
      seen.add(model.name);
      const stages = model.task === 'ocr' ? { detector: model.detector, recognizer: model.recognizer } : { '': model };
      const isUrl = (s: string | undefined): boolean => s !== undefined && (s.startsWith('https://') || s.startsWith('http://'));
      for (const [key, stage] of Object.entries(stages)) {
        if (isUrl(stage.source) && stage.sha256 === undefined) {
          const path = key === '' ? ['models', i, 'sha256'] : ['models', i, key, 'sha256'];
          ctx.addIssue({ code: 'custom', path, message: 'a URL source must carry a sha256' });
        }
      }
      const labelled = model.task === 'ocr' ? { recognizer: model.recognizer } : model.task === 'tensor' ? {} : { '': model };
      for (const [key, entry] of Object.entries(labelled)) {
        if (isUrl(entry.labels) && entry.labelsSha256 === undefined) {
          const path = key === '' ? ['models', i, 'labelsSha256'] : ['models', i, key, 'labelsSha256'];
          ctx.addIssue({ code: 'custom', path, message: 'a URL labels file must carry a labelsSha256' });
        }
      }
    });
  });

export type Manifest = z.infer<typeof ManifestSchema>;
export type ModelEntry = z.infer<typeof ModelEntrySchema>;
export type ClassificationEntry = z.infer<typeof ClassificationSchema>;
export type DetectionEntry = z.infer<typeof DetectionSchema>;
export type SegmentationEntry = z.infer<typeof SegmentationSchema>;
export type OcrEntry = z.infer<typeof OcrSchema>;
export type ShapeBuckets = z.infer<typeof ShapeBucketsSchema>;
export type TensorEntry = z.infer<typeof TensorSchema>;
export type Batching = z.infer<typeof BatchingSchema>;
/** What one stage is built from; no `input` for a model served as raw tensors only (it takes no images). */
export type StageEntry = Pick<ClassificationEntry, 'source' | 'sha256' | 'maxDownloadBytes' | 'batching' | 'instances' | 'providers' | 'memoryArena'> &
  Partial<Pick<ClassificationEntry, 'input'>>;
export type MemoryArenaSetting = StageEntry['memoryArena'];
export type Task = ModelEntry['task'];

export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

/** Formats zod issues as `models[1].input.width: expected number`, one per line. */
export function formatIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((i) => {
    const path = i.path
      .map((p, n) => (typeof p === 'number' ? `[${p}]` : n === 0 ? String(p) : `.${String(p)}`))
      .join('');
    return `${path || '(root)'}: ${i.message}`;
  });
}

export function parseManifest(json: unknown, origin = 'manifest'): Manifest {
  const parsed = ManifestSchema.safeParse(json);
  if (!parsed.success) {
    throw new ManifestError(`${origin} is invalid:\n  ${formatIssues(parsed.error.issues).join('\n  ')}`);
  }
  return parsed.data;
}

export interface LoadedManifest {
  manifest: Manifest;
  /** Folder that relative paths in the manifest are resolved against. */
  baseDir: string;
  path: string;
}

export async function loadManifest(path: string): Promise<LoadedManifest> {
  const abs = resolve(path);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    throw new ManifestError(`cannot read manifest ${abs}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ManifestError(`manifest ${abs} is not valid JSON: ${(err as Error).message}`);
  }
  return { manifest: parseManifest(json, `manifest ${abs}`), baseDir: dirname(abs), path: abs };
}

/** JSON Schema of the manifest (input side: defaults are optional), for editors. */
export function manifestJsonSchema(): unknown {
  return z.toJSONSchema(ManifestSchema, { io: 'input', unrepresentable: 'any' });
}
