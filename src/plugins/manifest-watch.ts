import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { ModelRegistry } from '../core/registry.js';

/**
 * Applies manifest and model file changes without a restart: on SIGHUP (main.ts) and when the manifest, or a
 * model or labels file it names, changes.
 *
 * Kubernetes updates a mounted ConfigMap in place by swapping a symlink (`..data`) to a new directory, and cannot
 * send signals, so files are polled by path (stat follows the symlink; fs.watch would watch the old inode): an
 * inode, size or mtime change of the manifest triggers a reload when its content's hash changed; such a change of
 * a model or labels file triggers one whatever the manifest says, and the registry then reloads exactly the models
 * whose files' content hashes changed (core/model-files.ts). The files polled follow the registry's manifest, read
 * at each poll. One poll at a time; the timer is unref'ed and stopped when the app closes.
 */

async function digestOf(path: string): Promise<string | undefined> {
  try {
    return createHash('sha256').update(await readFile(path)).digest('hex');
  } catch {
    return undefined;
  }
}

/** Reloads the manifest and logs the outcome; never throws (a bad manifest changes nothing and is logged). */
export async function reloadManifest(models: ModelRegistry, logger: Logger, trigger: string): Promise<void> {
  logger.info({ trigger, manifest: models.manifestPath }, 'manifest reload');
  try {
    const report = await models.reloadManifest();
    for (const f of report.failed) logger.error({ trigger, model: f.name, reason: f.reason }, 'model reload failed, previous version kept');
  } catch (err) {
    logger.error({ trigger, err }, 'manifest reload failed, nothing changed');
  }
}

/** What a poll compares: a file's identity and size and mtime, or 'absent'. */
async function statKey(path: string): Promise<string> {
  try {
    const s = await stat(path);
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return 'absent';
  }
}

export function registerManifestWatch(app: FastifyInstance, models: ModelRegistry, opts: { intervalMs: number; logger: Logger }): void {
  if (opts.intervalMs <= 0) return;
  const path = models.manifestPath;
  let lastDigest: Promise<string | undefined> = digestOf(path);
  /** Last stat key of each path polled; a path seen for the first time is recorded, not a change. */
  const seen = new Map<string, string>();
  let polling = false;
  let closed = false;

  const poll = async (): Promise<void> => {
    const files = [path, ...models.localFiles()];
    const changed: string[] = [];
    for (const file of files) {
      const key = await statKey(file);
      const before = seen.get(file);
      seen.set(file, key);
      if (before !== undefined && before !== key) changed.push(file);
    }
    for (const file of seen.keys()) if (!files.includes(file)) seen.delete(file);
    if (changed.length === 0 || closed) return;
    const manifestOnly = changed.length === 1 && changed[0] === path;
    if (manifestOnly) {
      const [before, now] = await Promise.all([lastDigest, digestOf(path)]);
      if (now === undefined || now === before) return;
      lastDigest = Promise.resolve(now);
    } else {
      lastDigest = digestOf(path);
      opts.logger.info({ files: changed }, 'model files changed');
    }
    await reloadManifest(models, opts.logger, 'file change');
  };

  const tick = (): void => {
    if (polling) return;
    polling = true;
    poll()
      .catch((err: unknown) => opts.logger.error({ err }, 'manifest watch poll failed'))
      .finally(() => {
        polling = false;
      });
  };
  tick(); // records the files as they are now: a change before the first interval is still seen
  const timer = setInterval(tick, opts.intervalMs);
  timer.unref();
  app.addHook('onClose', async () => {
    closed = true;
    clearInterval(timer);
  });
}
