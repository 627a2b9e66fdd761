import fp from 'fastify-plugin';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ModelRegistry } from '../core/registry.js';
import type { PreprocessPool } from '../core/preprocess/process-pool.js';
import type { Telemetry, Timings } from '../core/telemetry.js';

/**
 * Ocular's Prometheus metrics, on a registry of their own (so that several apps in one process, as in tests, do
 * not collide). Label values are bounded: a model label is always a manifest name or `_unknown`, an error code
 * is from the catalog, a status is an HTTP status.
 */

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128];

export const UNKNOWN_MODEL = '_unknown';

export type DropReason = 'client_closed' | 'timeout' | 'queue_full';

export class Metrics implements Telemetry {
  readonly registry = new Registry();
  private models: ModelRegistry | undefined;
  private preprocessPool: PreprocessPool | undefined;

  readonly requests = new Counter({
    name: 'ocular_requests_total',
    help: 'Prediction requests answered, by model, HTTP status and error code ("" on success).',
    labelNames: ['model', 'status', 'error_code'] as const,
    registers: [this.registry],
  });
  readonly requestDuration = new Histogram({
    name: 'ocular_request_duration_seconds',
    help: 'Time from a prediction request being received to its answer being ready, per request.',
    labelNames: ['model'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly queueDuration = new Histogram({
    name: 'ocular_queue_duration_seconds',
    help: 'Time a request waited in a model queue before its batch started, per request.',
    labelNames: ['model'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly preprocessDuration = new Histogram({
    name: 'ocular_preprocess_duration_seconds',
    help: 'Decode, resize and preprocessing time, per request.',
    labelNames: ['model'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly inferenceDuration = new Histogram({
    name: 'ocular_inference_duration_seconds',
    help: 'Time to run one batch on a model stage (normalisation, session run, output transfer), per batch.',
    labelNames: ['model', 'stage'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly batchSize = new Histogram({
    name: 'ocular_batch_size',
    help: 'Requests per batch, per batch.',
    labelNames: ['model', 'stage'] as const,
    buckets: BATCH_BUCKETS,
    registers: [this.registry],
  });
  readonly droppedTotal = new Counter({
    name: 'ocular_requests_dropped_total',
    help: 'Requests accepted but not run: client gone (client_closed), queue timeout (timeout), queue full (queue_full).',
    labelNames: ['model', 'reason'] as const,
    registers: [this.registry],
  });
  readonly modelInfo = new Gauge({
    name: 'ocular_model_info',
    help: 'Loaded models: 1 per model, version and execution provider.',
    labelNames: ['model', 'version', 'provider'] as const,
    registers: [this.registry],
  });
  readonly modelLoads = new Counter({
    name: 'ocular_model_loads_total',
    help: 'Model loads (startup, repository API, manifest reload), by model and result (success, failure).',
    labelNames: ['model', 'result'] as const,
    registers: [this.registry],
  });
  readonly preprocessExits = new Counter({
    name: 'ocular_preprocess_process_exits_total',
    help: 'Preprocessing child processes that exited without being asked to (each is started again).',
    registers: [this.registry],
  });
  readonly connectionsDropped = new Counter({
    name: 'ocular_http_connections_dropped_total',
    help: 'Connections closed as soon as accepted because their listener (main, probes) was at its connection cap.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  /** The modelInfo labels of each model's serving version, so a new version replaces them. */
  private readonly infoLabels = new Map<string, { model: string; version: string; provider: string }>();
  readonly modelLoadDuration = new Gauge({
    name: 'ocular_model_load_duration_seconds',
    help: 'Time the last load of a model took: fetch, verify, session creation, checks and warm-up.',
    labelNames: ['model'] as const,
    registers: [this.registry],
  });

  constructor() {
    const models = () => this.models?.list() ?? [];
    const sessions = () => this.models?.sessionCount ?? 0;
    new Gauge({
      name: 'ocular_queue_depth',
      help: 'Requests waiting in a model queue (not yet running).',
      labelNames: ['model'] as const,
      registers: [this.registry],
      collect() {
        for (const m of models()) this.set({ model: m.name }, m.depth);
      },
    });
    new Gauge({
      name: 'ocular_sessions',
      help: 'onnxruntime sessions (one per worker thread) not yet closed, old versions being retired included.',
      registers: [this.registry],
      collect() {
        this.set(sessions());
      },
    });
    new Gauge({
      name: 'ocular_session_input_shapes',
      help: 'Distinct input shapes (whole dims, batch included) each session of a model stage has run; session is the instance index.',
      labelNames: ['model', 'stage', 'session'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const m of models()) {
          for (const s of m.stages) s.pool.shapeCounts().forEach((n, i) => this.set({ model: m.name, stage: s.name, session: String(i) }, n));
        }
      },
    });
    new Gauge({
      name: 'ocular_stage_input_shape_bound',
      help: "The most distinct input shapes a model stage's batching policy lets one session run (absent where clients' sizes decide).",
      labelNames: ['model', 'stage'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const m of models()) {
          for (const s of m.stages) {
            const bound = s.shapeBound();
            if (bound !== undefined) this.set({ model: m.name, stage: s.name }, bound);
          }
        }
      },
    });
    const preprocess = () => this.preprocessPool?.stats();
    new Gauge({
      name: 'ocular_preprocess_processes',
      help: 'Preprocessing child processes started and ready (0: images are prepared in the server process).',
      registers: [this.registry],
      collect() {
        this.set(preprocess()?.ready ?? 0);
      },
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /** The preprocessing processes' gauges read this pool at scrape time. */
  attachPreprocess(pool: PreprocessPool): void {
    this.preprocessPool = pool;
  }

  /** Lets the queue-depth gauge read the registry at scrape time. */
  attach(models: ModelRegistry): void {
    this.models = models;
  }

  /**
   * Lets go of the registry and the preprocessing pool (the app closing, after both closed): a later scrape reports
   * no model instead of reading closed ones. The counters keep their values.
   */
  close(): void {
    this.models = undefined;
    this.preprocessPool = undefined;
  }

  batch(model: string, stage: string, size: number, inferenceSeconds: number): void {
    this.batchSize.observe({ model, stage }, size);
    this.inferenceDuration.observe({ model, stage }, inferenceSeconds);
  }

  /** An accepted request that was not run to the end, counted once, by the HTTP layer, from its error code. */
  dropRequest(model: string, reason: DropReason): void {
    this.droppedTotal.inc({ model, reason });
  }

  modelLoaded(model: string, version: string, provider: string, seconds: number): void {
    const old = this.infoLabels.get(model);
    if (old !== undefined) this.modelInfo.remove(old);
    this.infoLabels.set(model, { model, version, provider });
    this.modelLoads.inc({ model, result: 'success' });
    this.modelInfo.set({ model, version, provider }, 1);
    this.modelLoadDuration.set({ model }, seconds);
  }

  modelLoadFailed(model: string): void {
    this.modelLoads.inc({ model, result: 'failure' });
  }

  modelUnloaded(model: string): void {
    const old = this.infoLabels.get(model);
    if (old !== undefined) this.modelInfo.remove(old);
    this.infoLabels.delete(model);
  }

  observeRequest(model: string, status: number, errorCode: string, totalSeconds: number, timings: Timings | undefined): void {
    this.requests.inc({ model, status: String(status), error_code: errorCode });
    this.requestDuration.observe({ model }, totalSeconds);
    if (timings !== undefined && errorCode === '') {
      this.queueDuration.observe({ model }, timings.queueMs / 1000);
      this.preprocessDuration.observe({ model }, timings.preprocessMs / 1000);
    }
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The app's metrics (plugins/metrics.ts); the registry and preprocessing plugins attach to them. */
    metrics: Metrics;
  }
}

/** Owns the app's Metrics: registered first, so it closes last, after everything that reports to it. */
export const metricsPlugin = fp(
  async (app) => {
    const metrics = new Metrics();
    app.decorate('metrics', metrics);
    app.addHook('onClose', async () => metrics.close());
  },
  { name: 'ocular-metrics', fastify: '5.x' },
);
