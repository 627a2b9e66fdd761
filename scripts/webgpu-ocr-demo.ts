/**
 * The default manifest's OCR model on WebGPU, as a user starts it (issue #17, "What it must show"): `npm start`'s
 * node options and dist/src/main.js with OCULAR_DEVICE=webgpu, the no-parking photo read, then photos of N
 * different sizes (the shared photos resized in turn to sizes drawn from a fixed list), and each OCR stage's input
 * shapes per session against its bound, from /v1/models and /metrics. Prints a JSON summary as its last line.
 *
 *   npm run build && XDG_RUNTIME_DIR=/tmp/xdg npx tsx scripts/webgpu-ocr-demo.ts [--photos 20] [--device webgpu]
 *     [--request-timeout-ms 300000]
 *
 * Needs a Vulkan device (on a machine without a GPU, Mesa's lavapipe: ../shared/GPU.md) and the shared photos
 * ($OCULAR_SHARED_DIR, default ../shared). On lavapipe each photo takes seconds: the script is a demonstration
 * with figures, not a test.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { freePort, startOptions, startServer } from './lib/server.js';

const { values } = parseArgs({
  options: {
    photos: { type: 'string', default: '20' },
    device: { type: 'string', default: 'webgpu' },
    'ready-timeout-s': { type: 'string', default: '1800' },
    // A software Vulkan device runs a padded OCR batch in tens of seconds: the server's 10 s queue wait would refuse
    // requests queued behind one (503 QUEUE_TIMEOUT), so the demo gives them this long.
    'request-timeout-ms': { type: 'string', default: '300000' },
  },
});
const photos = Number(values.photos);
if (!Number.isInteger(photos) || photos < 1 || photos > 200) throw new Error('--photos: an integer 1..200');

const root = resolve(import.meta.dirname, '..');
const shared = resolve(root, process.env['OCULAR_SHARED_DIR'] ?? '../shared');
const images = join(shared, 'images');

interface Stage {
  stage: string;
  provider: string;
  nodeCounts: Record<string, number>;
  shapes: { perSession: number[]; bound?: number };
  batching: { padded: boolean; buckets?: { widths: number[]; heights: number[] } };
}
interface ModelInfo {
  name: string;
  provider?: string;
  stages: Stage[];
}

/** Long sides 256..1600 px and three aspect ratios, so that every photo has a size of its own. */
function sizeOf(i: number): { width: number; height: number } {
  const long = 256 + Math.round((i * (1600 - 256)) / Math.max(1, photos - 1));
  const aspect = [4 / 3, 16 / 9, 1][i % 3] as number;
  const portrait = i % 2 === 1;
  const short = Math.max(32, Math.round(long / aspect));
  return portrait ? { width: short, height: long } : { width: long, height: short };
}

const port = await freePort();
const server = await startServer({
  name: 'ocular',
  args: [...startOptions(join(root, 'package.json')), 'dist/src/main.js'],
  env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', OCULAR_DEVICE: values.device, OCULAR_GRPC_PORT: 'off', OCULAR_REQUEST_TIMEOUT_MS: values['request-timeout-ms'] },
  readyPath: '/readyz',
  port,
  cwd: root,
  timeoutMs: Number(values['ready-timeout-s']) * 1000,
});
const out: Record<string, unknown> = { device: values.device, requestTimeoutMs: Number(values['request-timeout-ms']), readyMs: Math.round(server.readyMs) };
try {
  const predict = async (body: Buffer): Promise<{ status: number; code?: string; lines: string[]; ms: number }> => {
    const t0 = performance.now();
    const res = await fetch(`${server.url}/v1/models/ocr/predict`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body });
    const json = (await res.json()) as { lines?: { text: string }[]; code?: string };
    return { status: res.status, ...(json.code !== undefined && { code: json.code }), lines: (json.lines ?? []).map((l) => l.text), ms: Math.round(performance.now() - t0) };
  };
  const models = async (): Promise<ModelInfo[]> => ((await (await fetch(`${server.url}/v1/models`)).json()) as { models: ModelInfo[] }).models;

  const before = (await models()).find((m) => m.name === 'ocr');
  out['stagesAtReady'] = before?.stages.map((s) => ({ stage: s.stage, provider: s.provider, shapes: s.shapes }));
  const parking = await predict(readFileSync(join(images, 'text_no_parking.jpg')));
  out['noParking'] = parking;

  const files = readdirSync(images).filter((f) => /\.(jpe?g|png)$/i.test(f)).sort();
  const runs: { photo: string; width: number; height: number; status: number; code?: string; lines: number; ms: number }[] = [];
  for (let i = 0; i < photos; i++) {
    const photo = files[i % files.length] as string;
    const { width, height } = sizeOf(i);
    const body = await sharp(join(images, photo)).resize(width, height, { fit: 'fill' }).jpeg({ quality: 90 }).toBuffer();
    const r = await predict(body);
    runs.push({ photo, width, height, status: r.status, ...(r.code !== undefined && { code: r.code }), lines: r.lines.length, ms: r.ms });
    process.stderr.write(`${i + 1}/${photos} ${photo} ${width}x${height}: ${r.status}${r.code !== undefined ? ` ${r.code}` : ''}, ${r.lines.length} lines, ${r.ms} ms\n`);
  }
  out['photos'] = runs;
  const after = (await models()).find((m) => m.name === 'ocr');
  out['provider'] = after?.provider;
  out['stages'] = after?.stages.map((s) => ({
    stage: s.stage,
    provider: s.provider,
    nodeCounts: s.nodeCounts,
    shapesPerSession: s.shapes.perSession,
    bound: s.shapes.bound,
    padded: s.batching.padded,
    buckets: s.batching.buckets,
    withinBound: s.shapes.bound !== undefined && s.shapes.perSession.every((n) => n <= (s.shapes.bound as number)),
  }));
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  out['metrics'] = metrics.split('\n').filter((l) => /^ocular_(session_input_shapes|stage_input_shape_bound)\{model="ocr"/.test(l));
} finally {
  await server.stop();
}
console.log(JSON.stringify(out));
