import type { z } from 'zod';
import type { ModelEntry, StageEntry, Task } from '../config/manifest.js';
import type { DecodeLimits, ImagePreparer } from './preprocess/image.js';
import type { Stage, StageOptions } from './stage.js';
import type { Timings } from './telemetry.js';

/**
 * The contract between the registry and the tasks: the registry creates a model's stages and hands them to a
 * task pipeline built by the factory the entry gives it (src/tasks/index.ts); core knows no task.
 */

export interface PredictContext {
  signal?: AbortSignal | undefined;
  timings: Timings;
  /**
   * Bytes the request's answer may still take, shared by its images (a multipart request's files): a task whose
   * answer grows with the image (segmentation masks) takes its share from it and refuses past it. Absent: the
   * task's own limit only.
   */
  answerBytes?: { left: number } | undefined;
}

/** Every answer carries the EXIF-upright size of the image it describes. */
export interface ImageResult {
  width: number;
  height: number;
}

/**
 * A task's pipeline: `P` is what its paramsSchema parses a query into, `R` what predict answers. A pipeline of one
 * task is also a pipeline of a union that includes its types (params are the pipeline's own by contract), which
 * is how the registry holds every task's pipeline under one type (PipelineFactory).
 */
export interface TaskPipeline<P = unknown, R extends ImageResult = ImageResult> {
  readonly task: Task;
  readonly stages: readonly Stage[];
  /** Class i's label, where the task has classes (classification, detection): loaded with the model. */
  readonly labels?: readonly string[];
  /** Validates the task's query parameters; unknown parameters are refused. */
  readonly paramsSchema: z.ZodType<P>;
  /** `params` must already be parsed by paramsSchema. */
  predict(image: Buffer, params: P, ctx: PredictContext): Promise<R>;
  /** Batches at size 1 and at each stage's maximum, at the nominal size, before the model is READY. */
  warmup(): Promise<void>;
}

export interface StageRequest {
  shapePolicy: StageOptions['shapePolicy'];
  /**
   * Dims of the profiled warm-up run of the stage's first input; default the input spec's nominal size at batch 1,
   * or, without an input spec, the model's own dims at batch 1.
   */
  warmupDims?: number[];
  /** The stage also takes raw tensor requests (the v2 API) through a tensor batcher of its own. */
  servesTensors?: boolean;
  /** Size buckets for a stage of varying input sizes, and when they apply (StageOptions.sizeBuckets). */
  sizeBuckets?: StageOptions['sizeBuckets'];
  /** 'pad-width': the batch tensor is at least this wide (StageOptions.minTensorWidth). */
  minTensorWidth?: number;
  /**
   * Where its size buckets may apply, the model is rewritten so that a bucket's padding does not change what it
   * computes for the image (runner/region-mask.ts); a model the rewrite does not cover keeps its own graph.
   */
  maskPadding?: boolean;
  /**
   * Refuse an export recognised as one Ocular does not serve (instance segmentation, pose, oriented boxes:
   * model-recognise.ts, rejectUnsupportedExport), from the session's outputs and the file's metadata.
   */
  rejectUnsupportedExports?: boolean;
}

export interface PipelineDeps {
  baseDir: string;
  limits: DecodeLimits;
  /** Decodes and resizes an image for a stage: prepareImage here or in a preprocessing process. */
  prepare: ImagePreparer;
  /** Fetches, verifies and loads a stage; the registry owns (and on failure closes) every stage it creates. */
  createStage(field: string, entry: StageEntry, request: StageRequest): Promise<Stage>;
  /** A labels file's local path: a path as it is, a URL downloaded into the cache and checked against `sha256`. */
  resolveFile(source: string, sha256: string | undefined): Promise<string>;
}

/**
 * Builds a model's pipeline from its manifest entry: the entry passes the tasks' factory to the registry, which
 * stores what it returns (src/tasks/index.ts: a pipeline of the union of the tasks' params and results).
 */
export type PipelineFactory<Pipeline extends TaskPipeline = TaskPipeline> = (entry: ModelEntry, deps: PipelineDeps) => Promise<Pipeline>;
