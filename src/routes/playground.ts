import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';

/**
 * The playground: a static page at / that lists the models, posts a dropped image to the public predict API and
 * draws the answer over it (public/index.html, app.js with its helpers in lib.js, style.css, and the samples in public/samples/). The files are read once, at startup; there is
 * no build step and no other origin. The page carries its own strict Content-Security-Policy: no inline script or
 * style, nothing from elsewhere, images only from the page itself or the blob: URL of the dropped file.
 */

export const PLAYGROUND_CSP =
  "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/lib.js': { file: 'lib.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
  '/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
  // One sample per task, drawn by the project (scripts/make-examples.ts), for an answer in one click.
  '/samples/television.png': { file: 'samples/television.png', type: 'image/png' },
  '/samples/stop-sign.png': { file: 'samples/stop-sign.png', type: 'image/png' },
  '/samples/no-parking.png': { file: 'samples/no-parking.png', type: 'image/png' },
};

/** public/ beside src/ (tsx, tests) or beside dist/ (the built server runs dist/src/routes/playground.js). */
export function findPublicDir(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  return [resolve(here, '..', '..', 'public'), resolve(here, '..', '..', '..', 'public')].find((d) =>
    existsSync(join(d, 'index.html')),
  );
}

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

export function registerPlaygroundRoutes(app: FastifyInstance, publicDir = findPublicDir()): void {
  if (publicDir === undefined) {
    app.log.warn({}, 'playground files (public/) not found: the playground is not served');
    return;
  }
  const assets = new Map<string, Asset>();
  for (const [path, { file, type }] of Object.entries(FILES)) {
    const body = readFileSync(join(publicDir, file));
    assets.set(path, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` });
  }

  for (const [path, asset] of assets) {
    // auth: false: a browser loads the page by navigation, which cannot carry an API key; the page holds no data
    // and sends the key itself with every API call.
    app.get(path, { logLevel: 'warn', schema: { hide: true }, config: { auth: false } }, async (request, reply) => {
      // The page's own policy, whatever a global security-headers hook says for JSON answers: it is what lets the
      // page run its one script and draw blob: images, and nothing else.
      void reply
        .header('content-security-policy', PLAYGROUND_CSP)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
        .header('cache-control', 'no-cache')
        .header('etag', asset.etag);
      if (request.headers['if-none-match'] === asset.etag) return reply.code(304).send();
      return reply.type(asset.type).send(asset.body);
    });
  }
}
