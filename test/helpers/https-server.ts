/**
 * A local HTTPS server with a self-signed certificate made for the run (openssl), answering fixed routes: what the
 * URL source tests download from (test/core/source.test.ts) and what URL-only manifests are served by. Also a plain
 * HTTP one (an internal mirror).
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { createServer as createPlainServer, type IncomingMessage, type RequestListener, type Server as PlainServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';

export interface Tls {
  key: Buffer;
  cert: Buffer;
}

/** A self-signed certificate for 127.0.0.1 and localhost, or the reason there is none. */
export async function makeCert(): Promise<Tls | string> {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-tls-'));
  try {
    const keyPath = join(dir, 'key.pem');
    const certPath = join(dir, 'cert.pem');
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-subj',
          '/CN=localhost',
          '-addext',
          'subjectAltName=IP:127.0.0.1,DNS:localhost',
          '-days',
          '1',
          '-keyout',
          keyPath,
          '-out',
          certPath,
        ],
        { stdio: 'pipe' },
      );
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'openssl is not installed: cannot make a test certificate';
      throw err;
    }
    return { key: await readFile(keyPath), cert: await readFile(certPath) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface FakeServer {
  url(path: string): string;
  /** Paths requested, in order. */
  requests: string[];
}

/** Answers each path from `routes` (404 otherwise), recording the paths asked for. */
export function routeRequests(routes: Record<string, Handler>, requests: string[]): RequestListener {
  return (req, res) => {
    const path = req.url ?? '/';
    requests.push(path);
    // The client may hang up mid-body on purpose (size cap, stall): that is not a server failure.
    res.on('error', () => {});
    const handler = routes[path];
    if (handler === undefined) {
      res.writeHead(404).end('not found');
      return;
    }
    handler(req, res);
  };
}

/** Listens on 127.0.0.1 at a free port, closes on teardown; urls use `scheme`. */
export async function listen(t: Test, server: Server | PlainServer, scheme: 'https' | 'http', requests: string[]): Promise<FakeServer> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as AddressInfo;
  return { url: (path) => `${scheme}://127.0.0.1:${port}${path}`, requests };
}

export async function startServer(t: Test, tls: Tls, routes: Record<string, Handler>): Promise<FakeServer> {
  const requests: string[] = [];
  const server: Server = createServer({ key: tls.key, cert: tls.cert }, routeRequests(routes, requests));
  server.on('tlsClientError', () => {});
  return listen(t, server, 'https', requests);
}

/** A plain HTTP server on 127.0.0.1 (an internal mirror), closed on teardown. */
export async function startPlainServer(t: Test, routes: Record<string, Handler>): Promise<FakeServer> {
  const requests: string[] = [];
  return listen(t, createPlainServer(routeRequests(routes, requests)), 'http', requests);
}
