/**
 * The Grafana dashboard's structure (Grafana itself cannot run here; test/dashboard/prometheus.test.ts runs every
 * query against a real Prometheus): a valid layout, the data source through a variable, every variable defined,
 * every metric one that Ocular exports, the panels the issue asks for, the README listing them, and provisioning
 * that matches the compose file.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { parse } from 'yaml';
import { Metrics } from '../../src/plugins/metrics.js';
import { projectRoot } from '../helpers/shared.js';
import { BUILTIN_VARIABLES, allPanels, queryPanels, readDashboard, variablesIn } from './dashboard.js';

const dashboard = readDashboard();
const PANEL_TYPES = new Set(['row', 'timeseries', 'stat', 'table', 'heatmap', 'bargauge', 'gauge', 'barchart', 'text']);

function exprsOf(title: RegExp): string[] {
  return queryPanels(dashboard)
    .filter((p) => title.test(p.title))
    .flatMap((p) => (p.targets ?? []).map((tg) => tg.expr));
}

/** Every series name Ocular's /metrics can show (histograms as their _bucket, _sum and _count series). */
async function exportedSeries(): Promise<Set<string>> {
  const metrics = await new Metrics().registry.getMetricsAsJSON();
  const names = new Set<string>();
  for (const m of metrics) {
    names.add(m.name);
    if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
  }
  return names;
}

t.test('the dashboard has a stable uid, a title, a schema version, a time range and a refresh', async (t) => {
  t.match(dashboard.uid, /^[a-zA-Z0-9_-]{1,40}$/, 'a uid Grafana accepts (at most 40 characters)');
  t.equal(dashboard.title, 'Ocular');
  t.ok(Number.isInteger(dashboard.schemaVersion) && dashboard.schemaVersion >= 36, `schemaVersion ${dashboard.schemaVersion}`);
  t.match(dashboard.time, { from: /^now-/, to: 'now' });
  t.match(dashboard.refresh ?? '', /^\d+[smh]$/);
  t.notOk('id' in dashboard && dashboard['id'] !== null, 'no database id: provisioning assigns one');
  t.notOk('__inputs' in dashboard, 'no import-time inputs: provisioned as it is, the data source comes from a variable');
});

t.test('panels lie on the 24-column grid without overlapping, with unique ids and known types', async (t) => {
  const panels = allPanels(dashboard);
  t.ok(panels.length >= 10, `${panels.length} panels`);
  const ids = panels.map((p) => p.id);
  t.equal(new Set(ids).size, ids.length, 'unique ids');
  t.ok(ids.every((id) => Number.isInteger(id) && id > 0), 'positive integer ids');
  for (const p of panels) {
    t.ok(PANEL_TYPES.has(p.type), `${p.title}: panel type ${p.type}`);
    t.ok(p.title.trim().length > 0, `panel ${p.id} has a title`);
    const { x, y, w, h } = p.gridPos;
    t.ok([x, y, w, h].every((v) => Number.isInteger(v) && v >= 0) && w > 0 && h > 0 && x + w <= 24, `${p.title}: gridPos ${JSON.stringify(p.gridPos)} fits`);
  }
  const top = dashboard.panels;
  for (let i = 0; i < top.length; i++) {
    for (let j = i + 1; j < top.length; j++) {
      const a = (top[i] as (typeof top)[number]).gridPos;
      const b = (top[j] as (typeof top)[number]).gridPos;
      const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
      t.notOk(overlap, `${top[i]?.title} and ${top[j]?.title} do not overlap`);
    }
  }
});

t.test('every query panel reads the data source variable and has targets with unique refIds and expressions', async (t) => {
  const dsVar = dashboard.templating.list.find((v) => v.type === 'datasource');
  t.ok(dsVar, 'a data source variable');
  t.equal(dsVar?.query, 'prometheus', 'of Prometheus data sources');
  for (const p of queryPanels(dashboard)) {
    t.same(p.datasource, { type: 'prometheus', uid: `\${${dsVar?.name}}` }, `${p.title}: data source from the variable`);
    t.ok((p.description ?? '').length > 0, `${p.title}: has a description`);
    const targets = p.targets ?? [];
    t.ok(targets.length > 0, `${p.title}: has targets`);
    t.equal(new Set(targets.map((tg) => tg.refId)).size, targets.length, `${p.title}: unique refIds`);
    for (const tg of targets) {
      t.ok(tg.expr.trim().length > 0, `${p.title}/${tg.refId}: an expression`);
      t.same(tg.datasource, p.datasource, `${p.title}/${tg.refId}: the panel's data source`);
    }
  }
});

t.test('every variable a query uses is defined, and the query variables read Ocular\'s own labels', async (t) => {
  const defined = new Set([...dashboard.templating.list.map((v) => v.name), ...BUILTIN_VARIABLES]);
  const used = new Set<string>();
  for (const p of queryPanels(dashboard)) for (const tg of p.targets ?? []) for (const v of variablesIn(tg.expr)) used.add(v);
  for (const v of dashboard.templating.list) {
    const q = typeof v.query === 'string' ? v.query : String((v.query as { query?: string }).query ?? '');
    for (const name of variablesIn(q)) used.add(name);
    if (v.type !== 'query') continue;
    t.match(q, /^label_values\(ocular_model_info(\{[^}]*\})?, (job|instance|model)\)$/, `${v.name}: label_values of ocular_model_info`);
    t.equal(v.includeAll, true, `${v.name}: has All`);
    t.equal(v.allValue, '.*', `${v.name}: All is a regex matching everything (the queries use =~)`);
  }
  for (const name of used) t.ok(defined.has(name), `$${name} is defined`);
  for (const name of ['job', 'instance', 'model']) t.ok(used.has(name), `$${name} is used`);
  for (const p of queryPanels(dashboard)) {
    for (const tg of p.targets ?? []) {
      for (const name of ['job', 'instance', 'model']) {
        t.notMatch(tg.expr, new RegExp(`${name}="\\$${name}"`), `${p.title}: $${name} is matched with =~ (it may be several values)`);
      }
    }
  }
});

t.test('every metric a query names is one Ocular exports', async (t) => {
  const exported = await exportedSeries();
  for (const p of queryPanels(dashboard)) {
    for (const tg of p.targets ?? []) {
      const names = [...tg.expr.matchAll(/\b(?:ocular|nodejs|process)_[a-z0-9_]+\b/g)].map((m) => m[0]);
      t.ok(names.length > 0, `${p.title}/${tg.refId} reads a metric`);
      for (const n of names) t.ok(exported.has(n), `${p.title}: ${n} is exported`);
    }
  }
});

t.test('the panels cover what the issue asks for', async (t) => {
  const all = queryPanels(dashboard).flatMap((p) => (p.targets ?? []).map((tg) => ({ panel: p, expr: tg.expr })));
  const has = (what: string, ok: (p: (typeof all)[number]) => boolean) => t.ok(all.some(ok), what);
  has('request rate by model and status', (q) => /sum by \(model, status\) \(rate\(ocular_requests_total/.test(q.expr));
  has('errors by model and status', (q) => /ocular_requests_total\{[^}]*status!="200"/.test(q.expr) && /by \(model, status/.test(q.expr));
  for (const quantile of ['0.5', '0.95', '0.99']) {
    has(`latency p${Number(quantile) * 100}`, (q) => q.expr.startsWith(`histogram_quantile(${quantile}`) && q.expr.includes('ocular_request_duration_seconds_bucket'));
  }
  has('queue depth', (q) => q.expr.includes('ocular_queue_depth'));
  has('queue time', (q) => q.expr.includes('ocular_queue_duration_seconds_bucket'));
  has('batch-size distribution as a heatmap', (q) => q.panel.type === 'heatmap' && q.expr.includes('ocular_batch_size_bucket'));
  has('inference time per batch', (q) => q.expr.includes('ocular_inference_duration_seconds_bucket'));
  has('provider per model', (q) => q.panel.type === 'table' && /by \(model, version, provider\) \(ocular_model_info/.test(q.expr));
  has('event-loop lag', (q) => q.expr.includes('nodejs_eventloop_lag'));
  has('memory', (q) => q.expr.includes('process_resident_memory_bytes'));
  t.ok(exprsOf(/Error ratio/).length === 1, 'an error ratio');
});

t.test('docs/OBSERVABILITY.md lists every panel', async (t) => {
  const doc = readFileSync(join(projectRoot, 'docs', 'OBSERVABILITY.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Dashboard'));
  t.ok(doc.includes('## Dashboard'), 'a Dashboard section');
  for (const p of queryPanels(dashboard)) t.ok(section.includes(`| ${p.title} |`), `docs/OBSERVABILITY.md lists "${p.title}"`);
});

t.test('provisioning: Prometheus as the default data source, and the dashboard folder that compose mounts', async (t) => {
  const grafana = join(projectRoot, 'docker', 'grafana');
  const ds = parse(readFileSync(join(grafana, 'provisioning', 'datasources', 'prometheus.yaml'), 'utf8')) as {
    apiVersion: number;
    datasources: { type: string; url: string; isDefault?: boolean; uid?: string }[];
  };
  t.equal(ds.apiVersion, 1);
  t.match(ds.datasources, [{ type: 'prometheus', url: 'http://prometheus:9090', isDefault: true }]);
  const providers = parse(readFileSync(join(grafana, 'provisioning', 'dashboards', 'ocular.yaml'), 'utf8')) as {
    apiVersion: number;
    providers: { type: string; options: { path: string } }[];
  };
  t.equal(providers.apiVersion, 1);
  const dashboardsPath = providers.providers[0]?.options.path;
  t.equal(providers.providers[0]?.type, 'file');

  const compose = parse(readFileSync(join(projectRoot, 'compose.yaml'), 'utf8')) as {
    services: Record<string, { image?: string; profiles?: string[]; volumes?: string[]; environment?: Record<string, string> }>;
    volumes?: Record<string, unknown>;
  };
  const service = Object.values(compose.services).find((s) => /grafana\/grafana(-oss)?:/.test(s.image ?? ''));
  t.ok(service, 'a Grafana service in compose.yaml');
  if (service === undefined) return;
  t.same(service.profiles, ['monitoring'], 'in the monitoring profile');
  t.match(service.image, /:\$?\{?[^}]*grafana-oss:\d+\.\d+\.\d+\}?$/, 'a pinned Grafana version');
  t.ok(service.volumes?.includes('./docker/grafana/provisioning:/etc/grafana/provisioning:ro'), 'provisioning mounted where Grafana reads it');
  t.ok(service.volumes?.includes(`./docker/grafana/dashboards:${dashboardsPath}:ro`), `the dashboards mounted at the provider's path ${dashboardsPath}`);
  t.equal(service.environment?.['GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH'], `${dashboardsPath}/ocular.json`, 'the dashboard is the home page');
  const prometheus = Object.entries(compose.services).find(([, s]) => /prometheus/.test(s.image ?? ''));
  t.equal(prometheus?.[0], 'prometheus', 'the data source URL names the Prometheus service');
  t.ok(prometheus?.[1].profiles?.includes('monitoring'), 'which runs in the same profile');
});
