import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Worker threads whose entry is a module beside the caller: `./name.js` when built (dist/), `./name.ts` when run
 * from sources (tests, scripts under tsx).
 */

/** The URL of the entry module `name` beside `callerUrl` (the caller's `import.meta.url`), with the caller's extension. */
export function siblingModuleUrl(name: string, callerUrl: string): URL {
  return new URL(`./${name}${extname(fileURLToPath(callerUrl))}`, callerUrl);
}

/**
 * Starts a worker on `url`. Built, it is the module itself. From sources it is a .ts file: workers inherit
 * `--import=tsx`, but on Node 20 tsx registers its loader on the main thread only (it cannot tell a worker from
 * Node's internal loader thread before Node 22's `isInternalThread`), so the worker registers tsx itself before
 * importing the .ts entry.
 */
export function startModuleWorker(url: URL, options: WorkerOptions = {}): Worker {
  if (!url.pathname.endsWith('.ts')) return new Worker(url, options);
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const bootstrap =
    `import(${JSON.stringify(tsxApi)})` + `.then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); })`;
  return new Worker(bootstrap, { ...options, eval: true });
}
