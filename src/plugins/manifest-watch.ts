import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { unwatchFile, watchFile, type Stats } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { ModelRegistry } from '../core/registry.js';

/**
 * Applies manifest changes without a restart: on SIGHUP (main.ts) and when the manifest file changes.
 *
 * Kubernetes updates a mounted ConfigMap in place by swapping a symlink (`..data`) to a new directory, and cannot
 * send signals, so the file is polled with fs.watchFile (stat by path, which follows the symlink): an inode, size
 * or mtime change triggers a check, and a reload happens only when the content's hash changed. fs.watch would
 * miss the swap (it watches the old inode). The poll timer is not persistent and is stopped when the app closes.
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

export function registerManifestWatch(app: FastifyInstance, models: ModelRegistry, opts: { intervalMs: number; logger: Logger }): void {
  if (opts.intervalMs <= 0) return;
  const path = models.manifestPath;
  let last: Promise<string | undefined> = digestOf(path);
  let checking = Promise.resolve();
  const onChange = (curr: Stats, prev: Stats): void => {
    if (curr.ino === prev.ino && curr.size === prev.size && curr.mtimeMs === prev.mtimeMs) return;
    checking = checking.then(async () => {
      const [before, now] = await Promise.all([last, digestOf(path)]);
      if (now === undefined || now === before) return;
      last = Promise.resolve(now);
      await reloadManifest(models, opts.logger, 'file change');
    });
  };
  watchFile(path, { interval: opts.intervalMs, persistent: false }, onChange);
  app.addHook('onClose', async () => {
    unwatchFile(path, onChange);
  });
}
