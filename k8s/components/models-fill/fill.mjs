// @ts-check
/* global fetch */
/**
 * Fills a models volume from a list of files, each downloaded from its URL (or copied from a mounted file) and
 * verified by sha256 before it takes its place. Run by the Job ocular-models-fill with Ocular's own image (Node,
 * no other tool), and by test/deploy/models-fill.test.ts.
 *
 *   FILL_LIST        the list, JSON (default /etc/ocular-fill/models.json):
 *                    { "files": [ { "path": "ocr/det.onnx", "url": "https://…", "sha256": "<64 hex>" },
 *                                 { "path": "mobilenet/models.manifest.json", "from": "/etc/ocular-fill/x.json" } ] }
 *   FILL_DIR         the volume's mount (default /models); every `path` is relative to it and stays inside it
 *   FILL_ALLOW_HTTP  1: accept http:// URLs (an internal mirror; sha256 still required)
 *
 * Invariants: a file is only ever renamed into place after its bytes matched the sha256 (a download lands in
 * `<path>.part-<pid>` first), so a pod never reads a half-written or wrong model; a file already present with the
 * right sha256 is kept, so the Job can run again (a new model added to the list) without downloading the rest.
 * Every entry is tried; the exit status is 1 when any failed, with one JSON line per file on stdout.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, sep } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

const SHA256 = /^[0-9a-f]{64}$/;

/**
 * @typedef {{ path: string, url?: string, from?: string, sha256?: string }} Entry
 */

/** @param {unknown} raw @returns {Entry[]} the list's entries, or throws naming the first bad one */
function parseList(raw) {
  const files = /** @type {{ files?: unknown }} */ (raw ?? {}).files;
  if (!Array.isArray(files) || files.length === 0) throw new Error('the list has no "files" array');
  const seen = new Set();
  return files.map((f, i) => {
    const where = `files[${i}]`;
    if (f === null || typeof f !== 'object') throw new Error(`${where}: not an object`);
    const { path, url, from, sha256, ...rest } = /** @type {Record<string, unknown>} */ (f);
    if (Object.keys(rest).length > 0) throw new Error(`${where}: unknown field ${Object.keys(rest)[0]}`);
    if (typeof path !== 'string' || path === '' || isAbsolute(path) || normalize(path).split(sep).includes('..')) {
      throw new Error(`${where}: path must be a relative path inside the volume`);
    }
    if (seen.has(normalize(path))) throw new Error(`${where}: ${path} is listed twice`);
    seen.add(normalize(path));
    if ((url === undefined) === (from === undefined)) throw new Error(`${where}: give exactly one of url and from`);
    if (url !== undefined && (typeof url !== 'string' || !/^https?:\/\//.test(url))) throw new Error(`${where}: url must be http(s)://`);
    if (from !== undefined && (typeof from !== 'string' || !isAbsolute(from))) throw new Error(`${where}: from must be an absolute path`);
    if (url !== undefined && sha256 === undefined) throw new Error(`${where}: a URL needs its sha256`);
    if (sha256 !== undefined && (typeof sha256 !== 'string' || !SHA256.test(sha256))) throw new Error(`${where}: sha256 must be 64 lowercase hex digits`);
    return /** @type {Entry} */ ({ path, ...(url !== undefined ? { url } : {}), ...(from !== undefined ? { from } : {}), ...(sha256 !== undefined ? { sha256 } : {}) });
  });
}

/** @param {string} file @returns {Promise<string | undefined>} the file's sha256, or undefined when it is absent */
async function sha256Of(file) {
  const hash = createHash('sha256');
  try {
    await pipeline(createReadStream(file), hash);
  } catch (err) {
    if (/** @type {NodeJS.ErrnoException} */ (err).code === 'ENOENT') return undefined;
    throw err;
  }
  return hash.digest('hex');
}

/**
 * Writes one entry into `dir`. @param {Entry} entry @param {string} dir @param {boolean} allowHttp
 * @returns {Promise<{ path: string, result: 'present' | 'written', sha256: string, bytes?: number }>}
 */
async function fillOne(entry, dir, allowHttp) {
  const target = join(dir, entry.path);
  if (entry.sha256 !== undefined && (await sha256Of(target)) === entry.sha256) return { path: entry.path, result: 'present', sha256: entry.sha256 };
  await mkdir(dirname(target), { recursive: true });
  const part = `${target}.part-${process.pid}`;
  const hash = createHash('sha256');
  let bytes = 0;
  const tap = new Transform({
    transform(chunk, _enc, done) {
      hash.update(chunk);
      bytes += chunk.length;
      done(null, chunk);
    },
  });
  try {
    let source;
    if (entry.url !== undefined) {
      if (entry.url.startsWith('http://') && !allowHttp) throw new Error('http:// refused (set FILL_ALLOW_HTTP=1 for an internal mirror)');
      const response = await fetch(entry.url, { redirect: 'follow' });
      if (!response.ok || response.body === null) throw new Error(`GET ${entry.url}: HTTP ${response.status}`);
      source = Readable.fromWeb(/** @type {import('node:stream/web').ReadableStream<Uint8Array>} */ (response.body));
    } else {
      source = createReadStream(/** @type {string} */ (entry.from));
    }
    await pipeline(source, tap, createWriteStream(part, { mode: 0o644 }));
    const got = hash.digest('hex');
    if (entry.sha256 !== undefined && got !== entry.sha256) throw new Error(`sha256 mismatch: expected ${entry.sha256}, got ${got} (${bytes} bytes)`);
    await rename(part, target);
    return { path: entry.path, result: 'written', sha256: got, bytes };
  } finally {
    await rm(part, { force: true });
  }
}

/** @param {Record<string, string | undefined>} env @returns {Promise<number>} the exit status */
async function fill(env) {
  const dir = env['FILL_DIR'] ?? '/models';
  let entries;
  try {
    entries = parseList(JSON.parse(await readFile(env['FILL_LIST'] ?? '/etc/ocular-fill/models.json', 'utf8')));
  } catch (err) {
    console.log(JSON.stringify({ result: 'failed', error: `bad list: ${/** @type {Error} */ (err).message}` }));
    return 1;
  }
  let failed = 0;
  for (const entry of entries) {
    try {
      console.log(JSON.stringify(await fillOne(entry, dir, env['FILL_ALLOW_HTTP'] === '1')));
    } catch (err) {
      failed++;
      console.log(JSON.stringify({ path: entry.path, result: 'failed', error: /** @type {Error} */ (err).message }));
    }
  }
  return failed === 0 ? 0 : 1;
}

// Always the entry point: a ConfigMap mounts this file as a symlink, which a check of import.meta.url against
// argv[1] would not match.
process.exitCode = await fill(process.env);
