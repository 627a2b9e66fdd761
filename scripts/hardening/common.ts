/**
 * Shared by the long hardening scripts: a real server process on the shared models, and its metrics.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { send, writeManifest } from '../../test/helpers/hostile.js';
import { freePort, startServer, waitReady, type ChildServer } from '../../test/helpers/server.js';
import { LOAD_CLIENTS, type LoadClient } from '../lib/load.js';

export async function serve(
  models: string[],
  edit: (m: Record<string, unknown>) => Record<string, unknown> = (m) => m,
  env: Record<string, string> = {},
  nodeOptions: readonly string[] = [],
): Promise<{ server: ChildServer; port: number }> {
  const manifest = writeManifest(mkdtempSync(join(tmpdir(), 'ocular-hardening-')), models, edit);
  const port = await freePort();
  const server = startServer({ OCULAR_MANIFEST: manifest, OCULAR_LOG_LEVEL: 'warn', PORT: String(port), OCULAR_INTRA_OP_THREADS: '0', ...env }, [], { nodeOptions });
  process.on('exit', () => server.kill());
  await waitReady(server, port);
  return { server, port };
}

/** Selected samples from /metrics (unlabelled series, or the first of a labelled one). */
export async function scrape(port: number): Promise<Record<string, number>> {
  const text = (await send(port, { path: '/metrics' })).body;
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const [key, value] = [line.slice(0, line.lastIndexOf(' ')), Number(line.slice(line.lastIndexOf(' ') + 1))];
    if (!(key in out)) out[key] = value;
  }
  return out;
}

export function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/** `--client`: node (Node's http client, every answer read) or one of the load generators of scripts/lib/load.ts. */
export function clientArg(fallback: 'node' | LoadClient): 'node' | LoadClient {
  const i = process.argv.indexOf('--client');
  const client = i >= 0 ? process.argv[i + 1] : fallback;
  if (client !== 'node' && !LOAD_CLIENTS.includes(client as LoadClient)) throw new Error(`--client is one of node, ${LOAD_CLIENTS.join(', ')}`);
  return client as 'node' | LoadClient;
}
