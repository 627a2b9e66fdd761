#!/usr/bin/env node
import { pino, stdTimeFunctions } from 'pino';
import { buildApp } from './app.js';
import { ConfigError, helpText, parseConfig } from './config/config.js';
import { AuthConfigError } from './plugins/auth.js';
import { loadManifest } from './config/manifest.js';
import { configureSharp } from './tasks/preprocess/image.js';
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
      process.stderr.write(`${err.message}\n\n${helpText()}`);
      process.exit(2);
    }
    throw err;
  }
  if (parsed.help) {
    process.stdout.write(helpText());
    return;
  }
  const { config, warnings } = parsed;
  const logger = pino({
    level: config.logLevel,
    base: { service: 'ocular' },
    timestamp: stdTimeFunctions.isoTime,
    redact: { paths: REDACT, censor: '[redacted]' },
  });
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
    logger.fatal({ err }, 'cannot load the manifest');
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
    logger.error({ why, open: app.inFlight.open, graceMs: config.shutdownGraceMs }, 'forced shutdown: answering the remaining requests 503');
    // Then the runs already inside onnxruntime finish (at most 2 s): exiting in the middle of one aborts the process.
    void app.inFlight
      .answerAll(1000)
      .then(async (answered) => {
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
  logger.info({ manifest: manifest.path, models: manifest.manifest.models.map((m) => m.name) }, 'loading models');
  try {
    await app.ocular.models.loadAll();
  } catch (err) {
    if (shuttingDown) return;
    logger.fatal({ err }, 'a model failed to load');
    await app.close().catch(() => {});
    process.exit(1);
  }
  if (!shuttingDown) logger.info({ models: app.ocular.models.list().map((m) => m.describe().provider) }, 'ready');
  // After ready: until the children are up, images are prepared in this process.
  if (!shuttingDown) await app.ocular.startPreprocessing();
}

process.on('uncaughtException', (err) => {
  process.stderr.write(`${JSON.stringify({ level: 60, msg: 'uncaught exception', err: { message: err.message, stack: err.stack } })}\n`);
  process.exit(70);
});

await main();
