/** The Grafana dashboard under docker/grafana, read for the structure test and the Prometheus test. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../helpers/shared.js';

export const dashboardPath = join(projectRoot, 'docker', 'grafana', 'dashboards', 'ocular.json');

export interface Target {
  refId: string;
  expr: string;
  legendFormat?: string;
  format?: string;
  instant?: boolean;
  datasource?: { type?: string; uid?: string };
}

export interface Panel {
  id: number;
  type: string;
  title: string;
  description?: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}

export interface Variable {
  name: string;
  type: string;
  query: unknown;
  includeAll?: boolean;
  multi?: boolean;
  allValue?: string;
  datasource?: { type?: string; uid?: string };
}

export interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
  time: { from: string; to: string };
  refresh?: string;
  [key: string]: unknown;
}

export function readDashboard(): Dashboard {
  return JSON.parse(readFileSync(dashboardPath, 'utf8')) as Dashboard;
}

/** Every panel, those inside collapsed rows included. */
export function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Panels that query (every panel but rows). */
export function queryPanels(d: Dashboard): Panel[] {
  return allPanels(d).filter((p) => p.type !== 'row');
}

/** Grafana's built-in variables the queries may use. */
export const BUILTIN_VARIABLES = ['__rate_interval', '__interval', '__range'];

/** Names of the variables an expression uses ($name, ${name} and ${name:format}). */
export function variablesIn(expr: string): string[] {
  return [...expr.matchAll(/\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)/g)].map((m) => (m[1] ?? m[2]) as string);
}

/**
 * The expression as Grafana would send it with every template variable at "All" (its allValue) and the built-in
 * intervals at the given window.
 */
export function substitute(expr: string, values: Record<string, string>, window = '1m'): string {
  const all: Record<string, string> = { __rate_interval: window, __interval: '15s', __range: window, ...values };
  return expr.replace(/\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)/g, (whole, a: string | undefined, b: string | undefined) => {
    const name = (a ?? b) as string;
    return all[name] ?? whole;
  });
}
