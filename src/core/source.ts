import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import * as tls from 'node:tls';
import { isAbsolute, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { nodeExtraCaCertsFile } from '../config/config.js';

/**
 * Model sources: a path (absolute or relative to the manifest) or an https:// URL; http:// too, only where the
 * operator allows it (OCULAR_ALLOW_HTTP_SOURCES, for an internal mirror). A URL is downloaded once into the cache
 * dir, streamed to a temporary file with a size cap, hashed on the way, and renamed into place only when its
 * sha256 matches: a cache file named after its hash is therefore always complete and correct, and is reused with
 * no network. The sha256 is what makes plain http:// tolerable: a tampered download never reaches onnxruntime.
 */

export class SourceError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SourceError';
  }
}

export interface SourceOptions {
  baseDir: string;
  cacheDir: string;
  sha256?: string | undefined;
  maxBytes: number;
  /**
   * Extra CA certificates (PEM, one or more) to trust for downloads, e.g. a private model store's: added to the
   * roots Node trusts (its bundled store, NODE_EXTRA_CA_CERTS, the system store where enabled), never instead.
   */
  ca?: string | Buffer | undefined;
  /** Abort a download that receives nothing for this long. */
  stallTimeoutMs?: number;
  /** Allow http:// sources and redirects to http:// (OCULAR_ALLOW_HTTP_SOURCES); default: https:// only. */
  allowHttp?: boolean | undefined;
  /** What the file is, in errors ('model', 'labels'); default 'model'. */
  what?: string;
  /** The cached file's extension; default '.onnx'. */
  cacheExtension?: string;
}

/** The option that allows http://, named in the errors that refuse it. */
const ALLOW_HTTP_OPTION = 'OCULAR_ALLOW_HTTP_SOURCES';

export function isUrlSource(source: string): boolean {
  return source.startsWith('https://') || isHttpSource(source);
}

/** A plain http:// URL: downloaded only where SourceOptions.allowHttp says so. */
export function isHttpSource(source: string): boolean {
  return source.startsWith('http://');
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** Resolves a source to a verified local file path. */
export async function resolveSource(source: string, opts: SourceOptions): Promise<string> {
  if (isHttpSource(source) && opts.allowHttp !== true) {
    throw new SourceError(
      `${opts.what ?? 'model'} source ${source} is plain http://, refused: use https://, or set ${ALLOW_HTTP_OPTION}=true to allow http:// sources (an internal mirror; the sha256 is still checked)`,
    );
  }
  if (isUrlSource(source)) return fetchToCache(source, opts);
  const path = isAbsolute(source) ? source : resolve(opts.baseDir, source);
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new SourceError(`${opts.what ?? 'model'} source ${path} is not a file`);
  } catch (err) {
    if (err instanceof SourceError) throw err;
    throw new SourceError(`${opts.what ?? 'model'} file ${path} cannot be read: ${(err as Error).message}`, { cause: err });
  }
  if (opts.sha256 !== undefined) {
    const actual = await sha256File(path);
    if (actual !== opts.sha256) {
      throw new SourceError(`${opts.what ?? 'model'} file ${path} has sha256 ${actual}, the manifest expects ${opts.sha256}`);
    }
  }
  return path;
}

async function fetchToCache(url: string, opts: SourceOptions): Promise<string> {
  if (opts.sha256 === undefined) throw new SourceError(`URL source ${url} has no sha256`);
  const cacheDir = resolve(opts.cacheDir);
  await mkdir(cacheDir, { recursive: true });
  const finalPath = join(cacheDir, `${opts.sha256}${opts.cacheExtension ?? '.onnx'}`);
  try {
    if ((await sha256File(finalPath)) === opts.sha256) return finalPath;
    // A file under a hash name that does not match can only be damage: replace it.
    await rm(finalPath, { force: true });
  } catch {
    // not cached yet
  }

  const tmpPath = join(cacheDir, `.${opts.sha256}.${randomBytes(6).toString('hex')}.part`);
  try {
    const actual = await download(url, tmpPath, opts);
    if (actual !== opts.sha256) {
      throw new SourceError(`download of ${url} has sha256 ${actual}, the manifest expects ${opts.sha256}`);
    }
    await rename(tmpPath, finalPath);
    return finalPath;
  } finally {
    await rm(tmpPath, { force: true });
  }
}

/**
 * Streams url into path, returning the sha256 of what was written. Follows up to 5 redirects: to https://, or to
 * http:// where allowHttp is set (so an https:// source cannot be downgraded behind the operator's back).
 */
async function download(url: string, path: string, opts: SourceOptions, redirects = 0): Promise<string> {
  const ca = opts.ca !== undefined && !isHttpSource(url) ? await trustedCasWith(opts.ca) : undefined;
  const res = await get(url, opts, ca);
  const status = res.statusCode ?? 0;
  if (status >= 300 && status < 400 && res.headers.location !== undefined) {
    res.resume();
    if (redirects >= 5) throw new SourceError(`download of ${url}: too many redirects`);
    const next = new URL(res.headers.location, url).toString();
    if (!isUrlSource(next) || (isHttpSource(next) && opts.allowHttp !== true)) {
      const hint = isHttpSource(next) ? ` (set ${ALLOW_HTTP_OPTION}=true to allow http://)` : '';
      throw new SourceError(`download of ${url} redirects to a non-https URL ${next}${hint}`);
    }
    return download(next, path, opts, redirects + 1);
  }
  if (status !== 200) {
    res.resume();
    throw new SourceError(`download of ${url} failed: HTTP ${status}`);
  }
  const declared = Number(res.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > opts.maxBytes) {
    res.destroy();
    throw new SourceError(`download of ${url} is ${declared} bytes, over the cap of ${opts.maxBytes}`);
  }
  const hash = createHash('sha256');
  let received = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      if (received > opts.maxBytes) {
        cb(new SourceError(`download of ${url} exceeded the cap of ${opts.maxBytes} bytes`));
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const stallMs = opts.stallTimeoutMs ?? 30_000;
  res.setTimeout(stallMs, () => res.destroy(new SourceError(`download of ${url} stalled for ${stallMs} ms`)));
  try {
    // The file is opened before any byte flows: a write stream opening it by itself could create it after a
    // failure had already been cleaned up, leaving a stray .part file in the cache.
    const file = await open(path, 'w');
    await pipeline(res, meter, file.createWriteStream());
  } catch (err) {
    res.destroy();
    if (err instanceof SourceError) throw err;
    throw new SourceError(`download of ${url} failed: ${(err as Error).message}`, { cause: err });
  }
  if (Number.isFinite(declared) && received !== declared) {
    throw new SourceError(`download of ${url} ended after ${received} of ${declared} bytes`);
  }
  return hash.digest('hex');
}

type GetCACertificates = (type?: 'default') => string[];

/**
 * The CA list for a download with extra CAs: what Node trusts by default plus `extra`. Passing `ca` alone would
 * replace Node's roots (its bundled store and NODE_EXTRA_CA_CERTS) with `extra`. Node >= 22.15 lists its default
 * roots (tls.getCACertificates('default'), NODE_EXTRA_CA_CERTS and the system store included); older Node has no
 * such list, so it is rebuilt the way Node builds it: the bundled roots and the NODE_EXTRA_CA_CERTS file (which
 * Node reads at startup, as this does once per download). test/core/source-ca.test.ts checks both kinds of root.
 */
export async function trustedCasWith(extra: string | Buffer): Promise<string[]> {
  const getCACertificates = (tls as unknown as { getCACertificates?: GetCACertificates }).getCACertificates;
  if (typeof getCACertificates === 'function') return [...getCACertificates('default'), extra.toString()];
  const extraFile = nodeExtraCaCertsFile();
  // Node warns and goes on when this file cannot be read; so does this.
  const nodeExtra = extraFile !== undefined ? await readFile(extraFile, 'utf8').catch(() => undefined) : undefined;
  return [...tls.rootCertificates, ...(nodeExtra !== undefined ? [nodeExtra] : []), extra.toString()];
}

function get(url: string, opts: SourceOptions, ca: string[] | undefined): Promise<IncomingMessage> {
  return new Promise((resolvePromise, reject) => {
    // Same streaming, cap, stall and hash logic for both schemes; only the transport differs (no CA for http).
    const req = isHttpSource(url)
      ? httpRequest(url, { method: 'GET' }, resolvePromise)
      : httpsRequest(url, { method: 'GET', ...(ca !== undefined ? { ca } : {}) }, resolvePromise);
    req.setTimeout(opts.stallTimeoutMs ?? 30_000, () => req.destroy(new SourceError(`download of ${url} timed out`)));
    req.on('error', (err) =>
      reject(err instanceof SourceError ? err : new SourceError(`download of ${url} failed: ${err.message}`, { cause: err })),
    );
    req.end();
  });
}
