/**
 * Builds a real Ocular app for tests (after fastify/demo's test/helper.ts): config objects, never process.env;
 * models loaded before the test uses it; closed on teardown. Logs go to an in-memory stream so tests can
 * assert on them.
 */
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { buildApp } from '../../src/app.js';
import { type Config, parseConfig } from '../../src/config/config.js';
import { loadManifest } from '../../src/config/manifest.js';
import { configureSharp } from '../../src/tasks/preprocess/image.js';
import { projectRoot } from './shared.js';
import { join } from 'node:path';

export const sharedManifestPath = join(projectRoot, 'test', 'fixtures', 'shared.manifest.json');

export function testConfig(overrides: Partial<Config> = {}): Config {
  const { config } = parseConfig({}, []);
  return { ...config, port: 0, host: '127.0.0.1', logLevel: 'info', intraOpThreads: 1, ...overrides };
}

/** Collects pino's JSON lines. */
export class LogCapture extends Writable {
  readonly lines: Record<string, unknown>[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line.trim() !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>);
    }
    cb();
  }
  find(msg: string): Record<string, unknown>[] {
    return this.lines.filter((l) => l['msg'] === msg);
  }
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface TestApp {
  app: FastifyInstance;
  logs: LogCapture;
  config: Config;
}

/** Builds the app on a manifest, loads every model, and closes it when the test ends. */
export async function buildTestApp(
  t: Teardown,
  opts: { manifestPath?: string; config?: Partial<Config>; load?: boolean } = {},
): Promise<TestApp> {
  const config = testConfig({ manifest: opts.manifestPath ?? sharedManifestPath, ...opts.config });
  configureSharp(config.imageFormats);
  const logs = new LogCapture();
  const logger = pino({ level: config.logLevel }, logs);
  const manifest = await loadManifest(config.manifest);
  const app = await buildApp({ config, manifest, logger });
  t.teardown(() => app.close());
  if (opts.load !== false) await app.ocular.models.loadAll();
  return { app, logs, config };
}
