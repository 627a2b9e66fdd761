#!/usr/bin/env node
import { pino, stdTimeFunctions, type Logger } from 'pino';
import { buildApp } from './app.js';
import { ConfigError, OCULAR_VERSION, helpText, parseConfig } from './config/config.js';
import { AuthConfigError } from './plugins/auth.js';
import { ManifestError, loadManifest } from './config/manifest.js';
import { ModelFileMissingError } from './core/model-files.js';
import { ModelLoadError } from './core/registry.js';
import { listenUrl, readableDestination } from './core/log-format.js';
import { configureSharp } from './core/preprocess/sharp-config.js';
import { currentThreadId, startThreadRenicer } from './core/runner/thread-priority.js';

/**
 * Process entry: parse the config, build the app, listen early (liveness answers while models load), load the
 * models, and shut down cleanly on SIGTERM/SIGINT: readiness 503, new predictions 503, everything accepted is
 * answered, workers exit, all within the grace period.
 */

/** Fields that must never reach a log line. */
/** On SIGTERM the listener stays open until no request has arrived for this long (and none is open). */
const DRAIN_QUIET_MS = 300;

export const REDACT = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers["proxy-authorization"]',
  'req.headers.cookie',
  'headers.authorization',
  'headers["x-api-key"]',
];

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseConfig(process.env, process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      // What is wrong and where to look, not the whole help: that scrolls the problem out of sight.
      process.stderr.write(`ocular: ${err.message}\nRun with --help to see every option.\n`);
      process.exit(2);
    }
    throw err;
  }
  if (parsed.help) {
    process.stdout.write(helpText());
    return;
  }
  if (parsed.version) {
    process.stdout.write(`${OCULAR_VERSION}\n`);
    return;
  }
  const { config, warnings } = parsed;
  const options = {
    level: config.logLevel,
    base: { service: 'ocular' },
    timestamp: stdTimeFunctions.isoTime,
    redact: { paths: REDACT, censor: '[redacted]' },
  };
  // Readable lines for a person at a terminal, JSON lines for everything else (containers, pipes, collectors).
  const logger = process.stdout.isTTY ? pino(options, readableDestination(process.stdout)) : pino(options);
  for (const w of warnings) logger.warn({}, w);

  configureSharp(config.imageFormats);
  if (config.computeNice > 0) {
    // Image decoding at a lower priority than the event loop; the inference workers lower themselves.
    if (currentThreadId() === undefined) {
      logger.info({ nice: config.computeNice }, 'per-thread priorities need Linux and /proc: compute threads keep the process priority');
    } else {
      startThreadRenicer({ nice: config.computeNice });
    }
  }

  let manifest;
  try {
    manifest = await loadManifest(config.manifest);
  } catch (err) {
    // A manifest error is the user's to fix: its message, once, without a stack (it names the file and the field).
    if (err instanceof ManifestError) logger.fatal({ manifest: config.manifest, reason: err.message }, 'cannot load the manifest');
    else logger.fatal({ err }, 'cannot load the manifest');
    process.exit(1);
  }

  let app: Awaited<ReturnType<typeof buildApp>>;
  try {
    app = await buildApp({
      config,
      manifest,
      logger,
      onFatal: (err) => {
        // The device is in an unknown state: exit non-zero so the orchestrator restarts the pod, after answering
        // the open requests 503 like any forced exit (readiness off, no new run started). Runs, and so this, only
        // happen once the models load, after `force` below exists.
        logger.fatal({ err }, 'fatal device error, exiting');
        force('fatal device error', 71);
      },
    });
  } catch (err) {
    if (err instanceof AuthConfigError) {
      logger.fatal({ err: { message: err.message } }, 'invalid API keys file');
      process.exit(2);
    }
    throw err;
  }
  let shuttingDown = false;
  let forcing = false;
  // A second signal, the grace running out, or a fatal device error: every request still open is answered 503
  // DRAINING (none is left hanging or cut off), then the process exits with `code`.
  const force = (why: string, code = 1) => {
    if (forcing) return;
    forcing = true;
    app.ocular.models.startDraining();
    app.grpc.drain();
    logger.error({ why, open: app.inFlight.open, graceMs: config.shutdownGraceMs }, 'forced shutdown: answering the remaining requests 503');
    // Then the runs already inside onnxruntime finish (at most 2 s): exiting in the middle of one aborts the process.
    void app.inFlight
      .answerAll(1000)
      .then(async (answered) => {
        // The queues were rejected above (each gRPC call answered by its own handler); the calls still running now.
        answered += app.grpc.answerAll();
        const quiet = await app.ocular.models.haltRuns(2000);
        logger.error({ answered, runsFinished: quiet }, 'exiting with work unfinished');
      })
      .finally(() => process.exit(code));
  };
  const shutdown = (signal: string) => {
    if (shuttingDown) {
      force(`second ${signal}`);
      return;
    }
    shuttingDown = true;
    logger.info({ signal, graceMs: config.shutdownGraceMs }, 'shutting down: draining');
    app.ocular.models.startDraining();
    // gRPC health NOT_SERVING at once; its calls in progress finish in app.close's preClose (tryShutdown).
    app.grpc.drain();
    const timer = setTimeout(() => {
      logger.error({ graceMs: config.shutdownGraceMs }, 'shutdown grace expired, exiting with work unfinished');
      force('grace expired');
    }, config.shutdownGraceMs);
    timer.unref();
    // Keep listening until accepted work is answered and arrivals have stopped, then close the listener: closing
    // it at once would reset connections the kernel had already accepted but Node had not yet read.
    const drainMs = Math.max(1000, config.shutdownGraceMs - 2000);
    app.inFlight
      .settle(DRAIN_QUIET_MS, drainMs)
      .then((settled) => {
        if (!settled) logger.warn({ open: app.inFlight.open, drainMs }, 'requests still open at the end of the drain');
        return app.close();
      })
      .then(
      () => {
        logger.info({}, 'shut down');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'error while shutting down');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // Re-read the manifest: new and changed models are loaded beside the old versions, which keep serving.
  process.on('SIGHUP', () => {
    if (!shuttingDown) void app.ocular.reload('SIGHUP');
  });

  await app.listen({ host: config.host, port: config.port });
  // Outside the main port's connection cap, so that the orchestrator's probes are answered while it is reached.
  if (config.probePort !== undefined) await app.probeListener.listen({ host: config.host, port: config.probePort });
  if (config.grpcPort !== 0) await app.grpc.listen(config.host, config.grpcPort);
  logger.info({ manifest: manifest.path, models: manifest.manifest.models.map((m) => m.name) }, 'loading models');
  try {
    await app.ocular.models.loadAll();
  } catch (err) {
    if (shuttingDown) return;
    logLoadFailure(logger, err, manifest.path);
    await app.close().catch(() => {});
    process.exit(1);
  }
  if (!shuttingDown) {
    const address = app.server.address();
    const url = listenUrl(config.host, typeof address === 'object' && address !== null ? address.port : config.port);
    const models = app.ocular.models.list().map((m) => {
      const d = m.describe();
      return { name: d.name, task: d.task, provider: d.provider };
    });
    // gRPC health follows readiness at once, not at its next poll: SERVING before the ready line.
    app.grpc.syncHealth();
    // The message stays `ready` for whatever watches the JSON; a terminal shows it as readyMessage's sentence.
    logger.info({ url, models }, 'ready');
  }
  // After ready: until the children are up, images are prepared in this process.
  if (!shuttingDown) await app.ocular.startPreprocessing();
}

/**
 * One log line for a model that failed to load at startup. A missing model or labels file names the manifest
 * entry, the field, the path and the command that writes the default models. The error itself is not logged as
 * `err`: pino's serializer appends every cause's message, which repeats the reason.
 */
function logLoadFailure(logger: Logger, err: unknown, manifestPath: string): void {
  if (!(err instanceof ModelLoadError)) {
    logger.fatal({ err }, 'a model failed to load');
    return;
  }
  const cause = err.cause;
  if (cause instanceof ModelFileMissingError) {
    logger.fatal(
      { model: cause.model, field: cause.field, path: cause.path, manifest: manifestPath },
      `${cause.message}: \`npm run models:prepare\` (where dev dependencies are installed) writes the default models and their manifest to ./models (OCULAR_MANIFEST=./models/models.manifest.json); otherwise fix the path in ${manifestPath}`,
    );
    return;
  }
  logger.fatal({ model: err.model, manifest: manifestPath, ...(cause instanceof Error && { stack: cause.stack }) }, err.message);
}

process.on('uncaughtException', (err) => {
  process.stderr.write(`${JSON.stringify({ level: 60, msg: 'uncaught exception', err: { message: err.message, stack: err.stack } })}\n`);
  process.exit(70);
});

await main();
