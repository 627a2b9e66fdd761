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
import { configureSharp } from '../../src/core/preprocess/sharp-config.js';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { projectRoot, sharedDir } from './shared.js';

const fixtureManifestPath = join(projectRoot, 'test', 'fixtures', 'shared.manifest.json');
/** How the fixture manifest names the shared folder: relative to its own folder, test/fixtures. */
const FIXTURE_SHARED_PREFIX = '../../../shared/';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function rebase(value: Json): Json {
  if (typeof value === 'string') {
    return value.startsWith(FIXTURE_SHARED_PREFIX) ? join(sharedDir, value.slice(FIXTURE_SHARED_PREFIX.length)) : value;
  }
  if (Array.isArray(value)) return value.map(rebase);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, rebase(v)]));
  }
  return value;
}

/**
 * The models of test/fixtures/shared.manifest.json with every shared path made absolute against
 * $OCULAR_SHARED_DIR, for tests that write manifests of their own (in temp dirs).
 */
export function sharedModels(): Record<string, Json>[] {
  const base = JSON.parse(readFileSync(fixtureManifestPath, 'utf8')) as { models: Json[] };
  return base.models.map((m) => rebase(m) as Record<string, Json>);
}

export function sharedModel(name: string): Record<string, Json> {
  const entry = sharedModels().find((m) => m['name'] === name);
  if (entry === undefined) throw new Error(`${name} is not in the shared manifest`);
  return entry;
}

/** Writes a manifest of `models` into `dir` (a new temp dir when omitted) and returns its path. */
export function writeManifest(models: readonly Record<string, Json>[], dir = mkdtempSync(join(tmpdir(), 'ocular-manifest-'))): string {
  const path = join(dir, 'manifest.json');
  writeFileSync(path, JSON.stringify({ models }));
  return path;
}

/**
 * The shared manifest: the fixture itself where the shared folder sits beside the repository (its relative paths
 * hold), else a copy with paths resolved against $OCULAR_SHARED_DIR.
 */
export const sharedManifestPath =
  sharedDir === resolve(projectRoot, '..', 'shared') ? fixtureManifestPath : writeManifest(sharedModels());

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
