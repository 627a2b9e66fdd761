import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import fp from 'fastify-plugin';
import { OcularError } from '../errors.js';
import { answerClientError, errorFormatOf, errorText, JSON_TYPE } from './errors.js';
import { lingerOnClose } from './lingering-close.js';
import { securityHeadersFor } from './security-headers.js';

/**
 * Bounded connections. Every client connection holds a file descriptor and some memory, so:
 * - the main port takes at most `maxConnections`; Node closes one more as soon as it is accepted (the `drop`
 *   event, counted in ocular_http_connections_dropped_total). The cap sits under the open-file limit
 *   (config.ts:maxConnectionsOf): past that limit accepts fail with EMFILE, and libuv then closes every new
 *   connection of the process, whatever its port;
 * - a connection with no request in progress is closed after `keepAliveTimeoutMs`, whether it has carried a
 *   request (Node's keep-alive timeout) or not yet (Node applies no timeout to a connection that sends nothing:
 *   its header timeout starts with the first byte);
 * - the probes get a listener of their own (`app.probeListener`, started by main.ts when OCULAR_PROBE_PORT is
 *   set): a capped port drops a connection before reading it, so no margin on that port can tell a probe apart.
 *   The probe listener serves only the probe routes, through the app's own routing (same hooks, same state),
 *   with a small cap and short timeouts of its own;
 * - a connection closed by an answer sent before its request's body has arrived lingers a bounded while
 *   (plugins/lingering-close.ts), so that the client reads the answer instead of a reset.
 */

/** The routes the probe listener serves; anything else there is 404. */
export const PROBE_PATHS: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/v2/health/live', '/v2/health/ready']);
/** Kubelet opens one connection per probe; a few dozen leave room for every probe of a pod and a person's curl. */
export const PROBE_MAX_CONNECTIONS = 32;
/** Headers, whole request and idle time on the probe listener: a probe is one small GET. */
const PROBE_TIMEOUT_MS = 5_000;
/** At most one log line per this interval for dropped connections and accept errors (a flood must not flood the log). */
const LOG_INTERVAL_MS = 5_000;

export interface ConnectionsOptions {
  /** The main port's cap (config.ts:maxConnectionsOf). */
  maxConnections: number;
  /** Idle time after which a connection with no request in progress is closed. */
  keepAliveTimeoutMs: number;
}

export interface ProbeListener {
  /** Starts listening (after the app is ready); resolves with the port. */
  listen(opts: { host: string; port: number }): Promise<number>;
  /** The probe server (listening or not). */
  readonly server: Server;
}

declare module 'fastify' {
  interface FastifyInstance {
    probeListener: ProbeListener;
  }
}

type Log = { warn(obj: object, msg: string): void; error(obj: object, msg: string): void; info(obj: object, msg: string): void };

/** A connection with no request in progress is closed after `idleMs`, from its first byte on as before. */
function closeIdleConnections(server: Server, idleMs: number): void {
  // Node's own 'timeout' handler on the socket destroys it when no request or response is there to take the event.
  server.on('connection', (socket: Socket) => socket.setTimeout(idleMs));
  // Headers in: the header and request timeouts and then the keep-alive timeout take over.
  server.on('request', (req: IncomingMessage) => req.socket.setTimeout(0));
}

/** Counts and logs (at most every LOG_INTERVAL_MS) connections dropped at the cap, and keeps accept errors from crashing the process. */
function watchListener(server: Server, listener: 'main' | 'probes', log: Log, dropped: { inc(labels: { listener: string }): void }): void {
  let droppedSinceLog = 0;
  let lastDropLog = -Infinity;
  server.on('drop', () => {
    dropped.inc({ listener });
    droppedSinceLog++;
    if (performance.now() - lastDropLog >= LOG_INTERVAL_MS) {
      log.warn({ listener, dropped: droppedSinceLog, maxConnections: server.maxConnections }, 'connection cap reached: new connections closed');
      droppedSinceLog = 0;
      lastDropLog = performance.now();
    }
  });
  // After listening, an 'error' is an accept failure (EMFILE, ENFILE, ENOMEM): unhandled it would end the process.
  // libuv keeps accepting once descriptors are free again. Errors before listening stay with listen().
  let lastErrorLog = -Infinity;
  server.once('listening', () =>
    server.on('error', (err: NodeJS.ErrnoException) => {
      if (performance.now() - lastErrorLog < LOG_INTERVAL_MS) return;
      lastErrorLog = performance.now();
      log.error({ listener, err: { code: err.code, message: err.message } }, 'cannot accept connections');
    }),
  );
}

/** 404 NOT_FOUND in the catalog's format of the path, for what the probe listener does not serve. */
function answerNotProbe(req: IncomingMessage, res: ServerResponse): void {
  const url = req.url ?? '';
  const body = errorText(new OcularError('NOT_FOUND', 'this port serves only the probes'), errorFormatOf(url));
  res.writeHead(404, { 'content-type': JSON_TYPE, 'content-length': Buffer.byteLength(body), ...securityHeadersFor(JSON_TYPE) });
  res.end(body);
}

export const connectionsPlugin = fp<ConnectionsOptions>(
  async (app, opts) => {
    const log: Log = app.log;
    const dropped = app.metrics.connectionsDropped;
    const main = app.server;
    main.maxConnections = opts.maxConnections;
    closeIdleConnections(main, opts.keepAliveTimeoutMs);
    lingerOnClose(main);
    watchListener(main, 'main', log, dropped);

    const probes = createServer(
      {
        headersTimeout: PROBE_TIMEOUT_MS,
        requestTimeout: PROBE_TIMEOUT_MS,
        keepAliveTimeout: PROBE_TIMEOUT_MS,
        connectionsCheckingInterval: PROBE_TIMEOUT_MS / 5,
      },
      (req, res) => {
        const path = (req.url ?? '').split('?', 1)[0] ?? '';
        if ((req.method === 'GET' || req.method === 'HEAD') && PROBE_PATHS.has(path)) app.routing(req, res);
        else answerNotProbe(req, res);
      },
    );
    probes.maxConnections = PROBE_MAX_CONNECTIONS;
    probes.on('clientError', (err: Error & { code?: string }, socket: Socket) => answerClientError(err, socket, app.log));
    closeIdleConnections(probes, PROBE_TIMEOUT_MS);
    watchListener(probes, 'probes', log, dropped);

    app.decorate('probeListener', {
      server: probes,
      async listen({ host, port }) {
        await app.ready();
        await new Promise<void>((resolve, reject) => {
          probes.once('error', reject);
          probes.listen(port, host, () => {
            probes.off('error', reject);
            resolve();
          });
        });
        const bound = (probes.address() as AddressInfo).port;
        log.info({ host, port: bound, maxConnections: PROBE_MAX_CONNECTIONS }, 'probes listening');
        return bound;
      },
    } satisfies ProbeListener);

    app.addHook('onClose', async () => {
      if (!probes.listening) return;
      const closed = new Promise<void>((resolve) => probes.close(() => resolve()));
      probes.closeAllConnections();
      await closed;
    });
  },
  { name: 'ocular-connections', fastify: '5.x', dependencies: ['ocular-metrics'] },
);
