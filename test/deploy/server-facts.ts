/**
 * What the deployment files must agree with, read from the server itself rather than from a list: the paths of
 * its liveness and readiness routes (found by their OpenAPI summaries), its metrics route, and the port, drain
 * grace and manifest path its config gives for a container's environment.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { parse, parseAllDocuments } from 'yaml';
import { type Config, parseConfig } from '../../src/config/config.js';
import { buildTestApp } from '../helpers/app.js';
import { projectRoot } from '../helpers/shared.js';

export const repoRoot = projectRoot;
export const repoPath = (...parts: string[]) => join(projectRoot, ...parts);

export interface ServerFacts {
  livenessPath: string;
  readinessPath: string;
  metricsPath: string;
  /** Every GET route, for checks that a path is one the server serves. */
  hasGet(path: string): boolean;
  /** Metric names the server exports. */
  metricNames: Set<string>;
  /** The status a GET of `path` answers while no model is loaded (a readiness route fails, a liveness route passes). */
  statusWithoutModels(path: string): Promise<number>;
}

interface OpenApi {
  paths: Record<string, Record<string, { summary?: string }>>;
}

/** Builds the real app (models not loaded) and reads its routes. */
export async function readServerFacts(t: { teardown(fn: () => unknown): void }): Promise<ServerFacts> {
  const { app } = await buildTestApp(t, { manifestPath: repoPath('models.manifest.json'), load: false });
  await app.ready();
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<OpenApi>();
  const bySummary = (summary: string): string => {
    const found = Object.entries(doc.paths).filter(([, ops]) => ops['get']?.summary === summary);
    if (found.length !== 1 || found[0] === undefined) throw new Error(`expected one GET route summarised "${summary}"`);
    return found[0][0];
  };
  const hasGet = (path: string) => (app as FastifyInstance).hasRoute({ method: 'GET', url: path });
  const metricsPath = '/metrics';
  if (!hasGet(metricsPath)) throw new Error('the server registers no GET /metrics');
  const metricsText = (await app.inject({ method: 'GET', url: metricsPath })).body;
  const metricNames = new Set([...metricsText.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1] ?? ''));
  const statusWithoutModels = async (path: string) => (await app.inject({ method: 'GET', url: path })).statusCode;
  return { livenessPath: bySummary('Liveness'), readinessPath: bySummary('Readiness'), metricsPath, hasGet, metricNames, statusWithoutModels };
}

/** The server's config for a container's environment: its port, grace, manifest path, exactly as it parses them. */
export function configForEnv(env: Record<string, string>): Config {
  return parseConfig(env, []).config;
}

export function readYaml<T = unknown>(text: string): T {
  return parse(text, { merge: true }) as T;
}

/** `kubectl kustomize DIR` rendered into its documents. */
export function kustomize(dir: string): Record<string, unknown>[] {
  const out = execFileSync('kubectl', ['kustomize', repoPath(dir)], { encoding: 'utf8', timeout: 60_000 });
  return parseAllDocuments(out).map((d) => d.toJS() as Record<string, unknown>);
}
