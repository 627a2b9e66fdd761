/**
 * A lean HTTP/1.1 client for load generation: keep-alive sockets, requests written as one prebuilt buffer
 * (request line, headers and body built once per body, not per request), answers parsed only as far as the
 * status, Content-Length or chunked framing and `connection: close`. No body is kept.
 *
 * Why it exists: the benchmark's load generator shares the machine's cores with the server it measures, and the
 * in-process contender has no load generator at all. autocannon with a per-request body (`setupRequest`) costs
 * about 0.55 ms of CPU per request on the 2-core development machine, a static request list 0.37 ms, this client
 * about 0.22 ms (docs/PERFORMANCE.md), so less of the server's throughput is lost to the client.
 */
import net from 'node:net';

/** What one request ended with: an HTTP status, or a socket error, or no answer within the timeout. */
export type SendOutcome = number | 'socket' | 'timeout';

/** The bytes of one POST request, built once and written as they are for every send. */
export function buildRequest(url: URL, path: string, contentType: string, body: Buffer): Buffer {
  const head =
    `POST ${path} HTTP/1.1\r\nhost: ${url.host}\r\ncontent-type: ${contentType}\r\n` +
    `content-length: ${body.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

const CRLF2 = Buffer.from('\r\n\r\n');
const CRLF = Buffer.from('\r\n');

interface Pending {
  request: Buffer;
  resolve: (outcome: SendOutcome) => void;
}

/** Parses one answer after another from a byte stream; `onAnswer` gets each status. */
class ResponseParser {
  private buf: Buffer = Buffer.alloc(0);
  private status = 0;
  private close = false;
  /** -1: reading the head; >= 0: body bytes still to skip (Content-Length). */
  private remaining = -1;
  private chunked = false;

  constructor(private readonly onAnswer: (status: number, close: boolean) => void) {}

  /** Feeds bytes; throws on a response this client cannot frame. */
  push(data: Buffer): void {
    this.buf = this.buf.length === 0 ? data : Buffer.concat([this.buf, data]);
    for (;;) {
      if (this.remaining < 0 && !this.chunked) {
        const end = this.buf.indexOf(CRLF2);
        if (end < 0) return;
        this.readHead(this.buf.toString('latin1', 0, end));
        this.buf = this.buf.subarray(end + 4);
      }
      if (this.chunked) {
        if (!this.skipChunks()) return;
      } else {
        // Body bytes are dropped as they come, so a long body is never gathered.
        const take = Math.min(this.buf.length, this.remaining);
        this.buf = this.buf.subarray(take);
        this.remaining -= take;
        if (this.remaining > 0) return;
      }
      this.remaining = -1;
      this.chunked = false;
      this.onAnswer(this.status, this.close);
      if (this.buf.length === 0) return;
    }
  }

  private readHead(head: string): void {
    const lines = head.split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (m === null) throw new Error(`not an HTTP/1.x status line: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
    this.status = Number(m[1]);
    this.close = false;
    let length: number | undefined;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] as string;
      const colon = line.indexOf(':');
      if (colon < 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim().toLowerCase();
      if (name === 'content-length') length = Number(value);
      else if (name === 'transfer-encoding') this.chunked = value.split(',').some((v) => v.trim() === 'chunked');
      else if (name === 'connection') this.close = value.split(',').some((v) => v.trim() === 'close');
    }
    if (this.chunked) return;
    if (length === undefined || !Number.isSafeInteger(length) || length < 0) {
      // 204 and 304 have no body; anything else without a length would be framed by the close, which a
      // keep-alive load generator does not do (nor does it send `expect`, so no 1xx comes).
      if (this.status === 204 || this.status === 304) length = 0;
      else throw new Error(`status ${this.status} without Content-Length or chunked encoding`);
    }
    this.remaining = length;
  }

  /** Skips whole chunks; true once the last chunk and its trailers (usually none) are consumed. */
  private skipChunks(): boolean {
    for (;;) {
      const eol = this.buf.indexOf(CRLF);
      if (eol < 0) return false;
      const size = parseInt(this.buf.toString('latin1', 0, eol).split(';')[0] as string, 16);
      if (!Number.isSafeInteger(size) || size < 0) throw new Error('bad chunk size');
      if (size === 0) {
        // "0\r\n", then trailer lines, then an empty line: the first CRLF CRLF from the size line's own CRLF.
        const end = this.buf.indexOf(CRLF2, eol);
        if (end < 0) return false;
        this.buf = this.buf.subarray(end + 4);
        return true;
      }
      if (this.buf.length < eol + 2 + size + 2) return false;
      this.buf = this.buf.subarray(eol + 2 + size + 2);
    }
  }
}

class Connection {
  readonly socket: net.Socket;
  busy: Pending | undefined;
  /** When `busy` was handed to this connection (a request waiting for the connect is on the clock too). */
  sentAt = 0;
  private ready = false;

  constructor(
    host: string,
    port: number,
    private readonly onFree: (c: Connection) => void,
    private readonly onGone: (c: Connection) => void,
  ) {
    const parser = new ResponseParser((status, close) => {
      const done = this.busy;
      // An answer nobody asked for: the stream cannot be trusted any more.
      if (done === undefined) throw new Error('an answer without a request');
      this.busy = undefined;
      if (close) this.socket.destroy();
      done.resolve(status);
      if (!close) this.onFree(this);
    });
    this.socket = net.connect({ host, port, noDelay: true });
    this.socket.on('connect', () => {
      this.ready = true;
      if (this.busy !== undefined) this.socket.write(this.busy.request);
    });
    this.socket.on('data', (d: Buffer) => {
      try {
        parser.push(d);
      } catch {
        this.socket.destroy();
      }
    });
    this.socket.on('error', () => {}); // 'close' follows and settles what was in flight
    this.socket.on('close', () => {
      const p = this.busy;
      this.busy = undefined;
      this.onGone(this);
      p?.resolve('socket');
    });
  }

  /** Sends now, or once the socket has connected. */
  send(p: Pending): void {
    this.busy = p;
    this.sentAt = performance.now();
    if (this.ready) this.socket.write(p.request);
  }

  /** Ends a request that outlived the timeout: the socket goes, the request resolves 'timeout'. */
  expire(): void {
    const p = this.busy;
    this.busy = undefined;
    this.socket.destroy();
    p?.resolve('timeout');
  }
}

/**
 * At most `maxConnections` keep-alive sockets to one host; a request waits (FIFO) for a free one. One request
 * per socket at a time (no pipelining). `send` never rejects.
 */
export class Http1Pool {
  private readonly idle: Connection[] = [];
  private readonly all = new Set<Connection>();
  private readonly waiting: Pending[] = [];
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly url: URL,
    private readonly maxConnections: number,
    private readonly timeoutMs = 30_000,
  ) {
    if (url.protocol !== 'http:') throw new Error(`only http: URLs, got ${url.protocol}`);
    this.timer = setInterval(() => this.expireOld(), Math.min(1000, timeoutMs / 4));
    this.timer.unref();
  }

  send(request: Buffer): Promise<SendOutcome> {
    return new Promise((resolve) => {
      if (this.closed) {
        resolve('socket');
        return;
      }
      const p: Pending = { request, resolve };
      const c = this.idle.pop() ?? (this.all.size < this.maxConnections ? this.open() : undefined);
      if (c === undefined) this.waiting.push(p);
      else c.send(p);
    });
  }

  /** Closes every socket; requests in flight or waiting resolve 'socket'. */
  destroy(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const p of this.waiting.splice(0)) p.resolve('socket');
    for (const c of [...this.all]) c.socket.destroy();
  }

  private open(): Connection {
    const c = new Connection(
      this.url.hostname,
      Number(this.url.port || 80),
      (free) => this.release(free),
      (gone) => {
        this.all.delete(gone);
        const i = this.idle.indexOf(gone);
        if (i >= 0) this.idle.splice(i, 1);
        // A waiting request takes a new socket in place of the one that went.
        const next = this.closed ? undefined : this.waiting.shift();
        if (next !== undefined) this.open().send(next);
      },
    );
    this.all.add(c);
    return c;
  }

  private release(c: Connection): void {
    const next = this.waiting.shift();
    if (next !== undefined) c.send(next);
    else this.idle.push(c);
  }

  private expireOld(): void {
    const now = performance.now();
    for (const c of this.all) if (c.busy !== undefined && now - c.sentAt > this.timeoutMs) c.expire();
  }
}
