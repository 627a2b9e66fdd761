/**
 * Bounded decoding (issue 18, item 4), full size: --clients (default 8) concurrent /v1 predictions of a valid
 * progressive JPEG with --scans (default 2000) scans of a --side (default 4000) pixel grey picture
 * (test/helpers/jpeg-scans.ts; each scan is a pass over the whole image that libjpeg makes before any pixel comes
 * out). Runs, each on its own server process:
 *   - default limits: refused 422 IMAGE_TOO_COMPLEX from the scan count, before decoding (OCULAR_MAX_JPEG_SCANS);
 *   - scan limit lifted, 2 preprocessing processes, OCULAR_DECODE_TIMEOUT_MS 2000: each child over the limit plus
 *     its margin is killed and replaced, its request answered 422;
 *   - with --in-process: scan limit lifted, decoding in the server (sharp's timeout is checked only once pixels
 *     flow, after the scans are read: the decode runs to its end, then is refused). Costly: off by default.
 * Prints, per run, the answers and the server's RSS peak and after, event-loop lag and /healthz latency.
 * `npx tsx scripts/hardening/decoding.ts [--side 4000] [--scans 2000] [--clients 8] [--in-process 1]`
 * (127.0.0.1 only; a tiny check: --side 1000 --scans 200 --clients 2).
 */
import { manyScanJpeg } from '../../test/helpers/jpeg-scans.js';
import { send } from '../../test/helpers/hostile.js';
import { arg, serve } from './common.js';
import { measure } from './sampling.js';

const side = arg('side', 4000);
const scans = arg('scans', 2000);
const clients = arg('clients', 8);
const inProcess = arg('in-process', 0) === 1;
const image = await manyScanJpeg(side, scans);

async function run(name: string, env: Record<string, string>): Promise<void> {
  const { server, port } = await serve(['mobilenetv2'], (m) => m, env);
  const pid = server.child.pid as number;
  const { value, figures } = await measure(port, pid, () =>
    Promise.all(
      Array.from({ length: clients }, async () => {
        const started = performance.now();
        const r = await send(port, { path: '/v1/models/mobilenetv2/predict', body: image, headers: { 'content-type': 'image/jpeg' }, timeoutMs: 300_000 });
        const code = r.status === 200 ? '' : ` ${(JSON.parse(r.body) as { code?: string }).code ?? ''}`;
        return { answer: `${r.status}${code}`, ms: performance.now() - started };
      }),
    ),
  );
  const answers: Record<string, number> = {};
  for (const v of value) answers[v.answer] = (answers[v.answer] ?? 0) + 1;
  const slowestMs = Math.round(Math.max(...value.map((v) => v.ms)));
  console.log(JSON.stringify({ run: name, side, scans, imageBytes: image.length, clients, answers, slowestMs, ...figures }));
  server.kill();
}

await run('default limits', { OCULAR_PREPROCESS_PROCESSES: '0' });
await run('scan limit lifted, 2 preprocessing processes, 2 s decode limit', {
  OCULAR_MAX_JPEG_SCANS: '1000000',
  OCULAR_PREPROCESS_PROCESSES: '2',
  OCULAR_DECODE_TIMEOUT_MS: '2000',
});
if (inProcess) {
  await run('scan limit lifted, in the server process, 2 s decode limit', {
    OCULAR_MAX_JPEG_SCANS: '1000000',
    OCULAR_PREPROCESS_PROCESSES: '0',
    OCULAR_DECODE_TIMEOUT_MS: '2000',
  });
}
process.exit(0);
