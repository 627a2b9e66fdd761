/**
 * Loads a manifest's models in a registry of their own (CPU, one thread, masks for segmentation) and says why the
 * load failed: the ModelLoadError's message, or undefined when every model loaded. For the load-time check tests.
 */
import { join } from 'node:path';
import { pino } from 'pino';
import type { Test } from 'tap';
import { parseConfig } from '../../src/config/config.js';
import { loadManifest } from '../../src/config/manifest.js';
import { ModelLoadError, ModelRegistry } from '../../src/core/registry.js';
import { noopTelemetry } from '../../src/core/telemetry.js';
import { createTaskPipeline } from '../../src/tasks/index.js';
import { MaskPool } from '../../src/tasks/segmentation/mask-pool.js';

/** The load error of the manifest at `manifestPath` (downloads cached in `dir`), closed on the test's teardown. */
export async function registryLoadError(t: Test, manifestPath: string, dir: string): Promise<string | undefined> {
  const { config } = parseConfig({}, []);
  const masks = new MaskPool();
  const registry = new ModelRegistry({
    manifest: await loadManifest(manifestPath),
    config: { ...config, device: 'cpu', intraOpThreads: 1, cacheDir: join(dir, 'cache') },
    logger: pino({ level: 'silent' }),
    telemetry: noopTelemetry,
    createPipeline: createTaskPipeline({ masks, maxResponseBytes: 1 << 20 }),
  });
  t.teardown(async () => {
    await registry.close();
    await masks.close();
  });
  const err: unknown = await registry.loadAll().then(
    () => undefined,
    (e: unknown) => e,
  );
  if (err === undefined) return undefined;
  t.type(err, ModelLoadError);
  return err instanceof Error ? err.message : String(err);
}
