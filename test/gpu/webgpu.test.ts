/**
 * The GPU suite: every shared model on onnxruntime's WebGPU provider (Dawn over Vulkan) against the CPU provider,
 * through the server's own routes, plus the GPU code paths that only a GPU provider exercises: provider choice and
 * fallback, node counts per provider, padded batches, warm-up at the padded shape, and the input shapes each
 * session runs.
 *
 * In CI the device is Mesa's software Vulkan driver (lavapipe, from bookworm-backports: .ci/run), which is slow
 * (seconds per batch), so everything here is small: a few photos, batches of at most 2, the OCR detector limited to
 * 320 px, each session warmed once, one app per provider for the whole file.
 *
 * Where no WebGPU adapter can be created the suite skips with onnxruntime's reason; under OCULAR_REQUIRE_WEBGPU=1
 * (set by .ci/run) that is a failure. The provider-choice tests that simulate a missing device run in child
 * processes whose Vulkan loader is pointed at a nonexistent ICD, so they run everywhere.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import sharp from 'sharp';
import t, { type Test } from 'tap';
import type { Json } from '../helpers/app.js';
import type { ModelDescription } from '../../src/core/model-handle.js';
import { GPU_FALLBACK_MESSAGE } from '../../src/core/stage-loader.js';
import { buildTestApp, sharedModel, writeManifest, type TestApp } from '../helpers/app.js';
import { startServer } from '../helpers/server.js';
import { imagePath, modelPath, projectRoot, sharedTestOptions } from '../helpers/shared.js';
import { binaryRequest, float32Of, readResponse } from '../v2/helpers.js';

const started = performance.now();
t.setTimeout(15 * 60_000);
t.teardown(() => t.comment(`gpu suite wall time: ${((performance.now() - started) / 1000).toFixed(1)} s`));

const MODELS = ['mobilenetv2-12-int8', 'yolox-nano', 'ultraface-rfb-320', 'deeplabv3-mobilenetv2-voc', 'ppocrv4-det', 'ppocrv4-rec'];
const PHOTOS = ['cat_chelsea.png', 'street_notice_sign.jpg', 'person_grace_hopper.jpg', 'soccer_player.jpg', 'text_no_parking.jpg'];
const FILES = [...MODELS.map((m) => `models/${m}/model.onnx`), ...PHOTOS.map((p) => `images/${p}`)];
const WEBGPU_EP = 'WebGpuExecutionProvider';
const CPU_EP = 'CPUExecutionProvider';
// The tolerances the issue sets: classification scores, detection boxes after NMS.
const SCORE_TOLERANCE = 1e-3;
const BOX_TOLERANCE_PX = 1;
// Raw tensors, per model: the largest |webgpu - cpu| allowed over every output element (float32 kernels that sum
// in another order; the figure measured is printed beside it).
const RAW_TOLERANCE: Record<string, number> = { 'yolox-nano': 1e-2, deeplabv3: 1e-3 };

/** Whether onnxruntime gets a WebGPU adapter here, asked in a child process (a failed attempt stays out of this one). */
function probeWebgpu(): { ok: true } | { ok: false; reason: string } {
  const script = `import * as ort from 'onnxruntime-node';
await ort.InferenceSession.create(process.argv[1], { executionProviders: ['webgpu'], logSeverityLevel: 4 });`;
  try {
    execFileSync(process.execPath, ['--input-type=module', '-e', script, modelPath('ultraface-rfb-320')], {
      cwd: projectRoot,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 120_000,
    });
    return { ok: true };
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString('utf8') ?? String(err);
    const line = stderr.split('\n').find((l) => l.includes('WebGPU') || l.includes('Error')) ?? stderr.slice(0, 300);
    return { ok: false, reason: line.trim() };
  }
}

const shared = sharedTestOptions(...FILES);
const requireWebgpu = process.env['OCULAR_REQUIRE_WEBGPU'] === '1';
const probe = shared.skip === undefined ? probeWebgpu() : undefined;
const gpuOptions =
  shared.skip !== undefined ? shared : probe !== undefined && !probe.ok && !requireWebgpu ? { skip: `no WebGPU adapter here: ${probe.reason}` } : {};

/** The shared manifest's entries, small: batches of 2 (1 for the segmenter), the OCR detector at 320 px. */
function suiteModels(): Record<string, Json>[] {
  const batch = (entry: Record<string, Json>, maxBatchSize: number): Record<string, Json> => ({
    ...entry,
    batching: { ...(entry['batching'] as Record<string, Json>), maxBatchSize },
  });
  const ocr = sharedModel('ocr');
  const det = ocr['detector'] as Record<string, Json>;
  const detInput = det['input'] as Record<string, Json>;
  return [
    batch(sharedModel('mobilenetv2'), 2),
    batch(sharedModel('yolox-nano'), 2),
    batch(sharedModel('ultraface'), 2),
    batch(sharedModel('deeplabv3'), 1),
    {
      ...ocr,
      detector: batch({ ...det, input: { ...detInput, width: 320, height: 256, resize: { mode: 'limit-round32', limitSideLen: 320, limitType: 'max' } } }, 1),
      recognizer: batch(ocr['recognizer'] as Record<string, Json>, 2),
    },
  ];
}

interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}
interface Detection {
  label: string;
  score: number;
  box: Box;
}
interface Answer {
  predictions?: { label: string; score: number }[];
  detections?: Detection[];
  lines?: { text: string; box: Box }[];
}

async function predict(app: FastifyInstance, model: string, image: Buffer): Promise<Answer> {
  const res = await app.inject({ method: 'POST', url: `/v1/models/${model}/predict`, headers: { 'content-type': 'application/octet-stream' }, payload: image });
  if (res.statusCode !== 200) throw new Error(`${model}: ${res.statusCode} ${res.body.slice(0, 300)}`);
  return res.json<Answer>();
}

async function inferRaw(app: FastifyInstance, model: string, input: { name: string; shape: number[]; data: Float32Array }): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const { body, headers } = binaryRequest(
    [{ name: input.name, datatype: 'FP32', shape: input.shape, bytes: Buffer.from(input.data.buffer, input.data.byteOffset, input.data.byteLength) }],
    { parameters: { binary_data_output: true } },
  );
  const res = await app.inject({ method: 'POST', url: `/v2/models/${model}/infer`, headers, payload: body });
  if (res.statusCode !== 200) throw new Error(`${model} /v2: ${res.statusCode} ${res.body.slice(0, 300)}`);
  const { json, binary } = readResponse(res.rawPayload, res.headers['inference-header-content-length']);
  return new Map(json.outputs.map((o) => [o.name, { shape: o.shape, data: float32Of(binary.get(o.name) ?? Buffer.alloc(0)) }]));
}

async function models(app: FastifyInstance): Promise<ModelDescription[]> {
  return (await app.inject({ method: 'GET', url: '/v1/models' })).json<{ models: ModelDescription[] }>().models;
}

const boxDistance = (a: Box, b: Box): number => Math.max(Math.abs(a.x1 - b.x1), Math.abs(a.y1 - b.y1), Math.abs(a.x2 - b.x2), Math.abs(a.y2 - b.y2));

/** Pixels in [0, 255] (seeded xorshift), scaled, for a raw tensor of `n` elements. */
function noise(n: number, scale: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = ((x >>> 0) % 256) * scale;
  }
  return out;
}

/** The photo set: the shared photos plus resized copies, so that OCR sees several sizes. */
async function photoSet(): Promise<{ name: string; bytes: Buffer }[]> {
  const set = PHOTOS.map((p) => ({ name: p, bytes: readFileSync(imagePath(p)) }));
  const sign = readFileSync(imagePath('text_no_parking.jpg'));
  for (const width of [400, 560]) set.push({ name: `text_no_parking@${width}`, bytes: await sharp(sign).resize({ width }).jpeg().toBuffer() });
  return set;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

t.test('webgpu against cpu: every shared model, the GPU batching policy and the shapes each session runs', gpuOptions, async (t: Test) => {
  if (probe !== undefined && !probe.ok) throw new Error(`OCULAR_REQUIRE_WEBGPU=1 but no WebGPU adapter: ${probe.reason}`);
  const manifestPath = writeManifest(suiteModels(), t.testdir());
  const loadStarted = performance.now();
  const cpu: TestApp = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const gpu: TestApp = await buildTestApp(t, { manifestPath, config: { device: 'webgpu', manifestWatchMs: 0 } });
  t.comment(`both apps ready in ${((performance.now() - loadStarted) / 1000).toFixed(1)} s`);

  const warmed = await models(gpu.app);
  t.test('every stage runs on webgpu, its node counts per provider shown, and the software driver is warned about', async (t) => {
    for (const m of warmed) {
      for (const s of m.stages) {
        t.equal(s.provider, 'webgpu', `${m.name}/${s.stage} on webgpu`);
        t.same(s.requestedProviders, ['webgpu']);
        t.ok((s.nodeCounts[WEBGPU_EP] ?? 0) > 0, `${m.name}/${s.stage} nodes: ${JSON.stringify(s.nodeCounts)}`);
      }
    }
    const metrics = (await gpu.app.inject({ method: 'GET', url: '/metrics' })).body;
    for (const m of warmed) t.match(metrics, new RegExp(`ocular_model_info\\{model="${m.name}",version="[^"]+",provider="webgpu"\\} 1`));
    const warning = gpu.logs.lines.find((l) => String(l['msg']).startsWith('WebGPU runs on a software Vulkan driver'));
    t.ok(warning, 'lavapipe is named a software driver, tens of times slower than the CPU');
    t.equal(gpu.logs.lines.filter((l) => String(l['msg']).startsWith('WebGPU runs on a software Vulkan driver')).length, 1, 'once per process');
  });

  t.test('padded batches on the GPU provider, never on the CPU; warm-up ran the padded shape only', async (t) => {
    const cpuModels = await models(cpu.app);
    for (const name of ['mobilenetv2', 'yolox-nano', 'ultraface']) {
      const g = warmed.find((m) => m.name === name)?.stages[0];
      const c = cpuModels.find((m) => m.name === name)?.stages[0];
      const placedOnGpu = (g?.nodeCounts[WEBGPU_EP] ?? 0) >= (g?.nodeCounts[CPU_EP] ?? 0);
      t.equal(g?.batching.padded, placedOnGpu, `${name}: padded on webgpu exactly when most nodes are there (${JSON.stringify(g?.nodeCounts)})`);
      t.equal(c?.batching.padded, false, `${name}: never padded on cpu`);
      if (g?.batching.padded === true) {
        t.same(g.shapes, { perSession: [1], bound: 1 }, `${name}: warm-up ran one shape, the padded one`);
      }
      t.ok((c?.shapes.perSession[0] ?? 0) > 1, `${name}: the cpu warm-up ran ${c?.shapes.perSession[0]} batch sizes`);
    }
  });

  const photos = await photoSet();
  const parity: string[] = [];

  t.test('classification: same top-1, scores within 1e-3', async (t) => {
    for (const photo of photos.filter((p) => ['cat_chelsea.png', 'soccer_player.jpg'].includes(p.name))) {
      const a = (await predict(cpu.app, 'mobilenetv2', photo.bytes)).predictions ?? [];
      const b = (await predict(gpu.app, 'mobilenetv2', photo.bytes)).predictions ?? [];
      t.equal(b[0]?.label, a[0]?.label, `${photo.name}: top-1 ${a[0]?.label}`);
      const diff = Math.max(...a.map((p) => Math.abs(p.score - (b.find((q) => q.label === p.label)?.score ?? Infinity))));
      t.ok(diff <= SCORE_TOLERANCE, `${photo.name}: max score diff ${diff.toExponential(2)}`);
      parity.push(`mobilenetv2 ${photo.name}: top-1 ${a[0]?.label}, max score diff ${diff.toExponential(2)}`);
    }
  });

  t.test('detection: the same boxes after NMS, within 1 px', async (t) => {
    const cases: [string, string][] = [
      ['yolox-nano', 'street_notice_sign.jpg'],
      ['yolox-nano', 'soccer_player.jpg'],
      ['ultraface', 'person_grace_hopper.jpg'],
    ];
    for (const [model, name] of cases) {
      const photo = photos.find((p) => p.name === name)?.bytes as Buffer;
      const a = (await predict(cpu.app, model, photo)).detections ?? [];
      const b = (await predict(gpu.app, model, photo)).detections ?? [];
      t.ok(a.length > 0, `${model} on ${name}: cpu finds ${a.length}`);
      t.equal(b.length, a.length, `${model} on ${name}: as many detections`);
      let worst = 0;
      for (const d of a) {
        const best = Math.min(...b.filter((x) => x.label === d.label).map((x) => boxDistance(x.box, d.box)));
        worst = Math.max(worst, best);
        t.ok(best <= BOX_TOLERANCE_PX, `${model} on ${name}: ${d.label} ${d.score.toFixed(2)} within ${best.toFixed(3)} px`);
      }
      parity.push(`${model} ${name}: ${a.length} boxes, worst ${worst.toFixed(3)} px`);
    }
  });

  t.test('OCR: the same text', async (t) => {
    for (const photo of photos.filter((p) => p.name.startsWith('text_no_parking'))) {
      const a = (await predict(cpu.app, 'ocr', photo.bytes)).lines ?? [];
      const b = (await predict(gpu.app, 'ocr', photo.bytes)).lines ?? [];
      t.ok(a.length > 0, `${photo.name}: cpu reads ${JSON.stringify(a.map((l) => l.text))}`);
      t.same(b.map((l) => l.text), a.map((l) => l.text), `${photo.name}: same lines`);
      parity.push(`ocr ${photo.name}: ${JSON.stringify(a.map((l) => l.text))}`);
    }
  });

  t.test('raw tensors over /v2: max abs difference per model, and padding rows never returned', async (t) => {
    const cases = [
      { model: 'yolox-nano', name: 'images', shape: [1, 3, 416, 416], scale: 1 },
      { model: 'deeplabv3', name: 'sub_7', shape: [1, 257, 257, 3], scale: 2 / 255 },
    ];
    for (const c of cases) {
      const data = noise(c.shape.reduce((a, b) => a * b, 1), c.scale, 7);
      const input = { name: c.name, shape: c.shape, data };
      const a = await inferRaw(cpu.app, c.model, input);
      const b = await inferRaw(gpu.app, c.model, input);
      for (const [name, out] of a) {
        const other = b.get(name);
        t.same(other?.shape, out.shape, `${c.model}.${name}: shape ${JSON.stringify(out.shape)} (one row, not the padded batch)`);
        const diff = maxAbsDiff(out.data, other?.data ?? new Float32Array(0));
        const tolerance = RAW_TOLERANCE[c.model] ?? 1e-3;
        t.ok(diff <= tolerance, `${c.model}.${name}: max |webgpu - cpu| ${diff.toExponential(2)} <= ${tolerance}`);
        parity.push(`${c.model} /v2 ${name}: max abs diff ${diff.toExponential(2)}`);
      }
    }
  });

  t.test('after a varied photo set, each session ran no more shapes than its stage allows', async (t) => {
    for (const photo of photos) {
      await Promise.all(['yolox-nano', 'ultraface', 'mobilenetv2'].map((m) => predict(gpu.app, m, photo.bytes)));
    }
    const body = (await gpu.app.inject({ method: 'GET', url: '/metrics' })).body;
    for (const m of await models(gpu.app)) {
      for (const s of m.stages) {
        const counts = s.shapes.perSession;
        t.comment(`${m.name}/${s.stage}: shapes per session ${JSON.stringify(counts)}, bound ${s.shapes.bound ?? 'none (client sizes)'}`);
        parity.push(`${m.name}/${s.stage} shapes ${JSON.stringify(counts)} bound ${s.shapes.bound ?? '-'} nodes ${JSON.stringify(s.nodeCounts)}`);
        if (s.shapes.bound !== undefined) {
          for (const n of counts) t.ok(n <= s.shapes.bound, `${m.name}/${s.stage}: ${n} shapes <= bound ${s.shapes.bound}`);
          t.match(body, new RegExp(`ocular_stage_input_shape_bound\\{model="${m.name}",stage="${s.stage}"\\} ${s.shapes.bound}`));
        }
        counts.forEach((n, i) =>
          t.match(body, new RegExp(`ocular_session_input_shapes\\{model="${m.name}",stage="${s.stage}",session="${i}"\\} ${n}`), `${m.name}/${s.stage} session ${i} exported`),
        );
      }
    }
  });

  t.teardown(() => t.comment(`figures:\n${parity.join('\n')}`));
});

/** A server child whose Vulkan loader finds no driver: WebGPU has no adapter, as on a machine without a GPU. */
function serverWithoutVulkan(env: Record<string, string>) {
  return startServer({
    VK_ICD_FILENAMES: '/nonexistent/ocular-no-icd.json',
    VK_DRIVER_FILES: '/nonexistent/ocular-no-icd.json',
    OCULAR_MANIFEST: writeManifest([{ ...sharedModel('ultraface'), batching: { maxBatchSize: 1, maxQueueDelayMs: 0, maxQueueSize: 8 } }]),
    OCULAR_PREPROCESS_PROCESSES: '0',
    ...env,
  });
}

const ultraface = sharedTestOptions('models/ultraface-rfb-320/model.onnx');

t.test('webgpu requested, no adapter: OCULAR_DEVICE=webgpu fails at startup, naming the cause', ultraface, async (t) => {
  const server = serverWithoutVulkan({ OCULAR_DEVICE: 'webgpu' });
  t.teardown(server.kill);
  const exit = await server.exited;
  t.equal(exit.code, 1, 'exits 1');
  const fatal = server.lines.find((l) => l['level'] === 60);
  t.match(JSON.stringify(fatal), /webgpu: .*(adapter|WebGPU)/i, "the fatal log line carries onnxruntime's text for webgpu");
});

t.test('webgpu then cpu requested, no adapter: the CPU takes over with a warning', ultraface, async (t) => {
  const server = serverWithoutVulkan({ OCULAR_PROVIDERS: 'webgpu,cpu' });
  t.teardown(server.kill);
  // One warning per process names the remedy (GPU_FALLBACK_MESSAGE); the stage's own line carries the reason.
  const warn = await server.waitFor((l) => l['level'] === 40 && l['msg'] === GPU_FALLBACK_MESSAGE, 'the fallback warning');
  t.match(warn, { requested: ['webgpu', 'cpu'], provider: 'cpu' });
  t.match(String(warn['reason']), /webgpu: /);
  const port = await server.port;
  await server.waitFor((l) => l['msg'] === 'ready', 'ready');
  const res = await fetch(`http://127.0.0.1:${port}/v1/models/ultraface`);
  const body = (await res.json()) as ModelDescription;
  t.equal(body.provider, 'cpu');
  // A caller who is not an admin reads which provider could not be used, not onnxruntime's text (issue #19).
  t.match(body.stages[0], { provider: 'cpu', requestedProviders: ['webgpu', 'cpu'], fallbackReason: /^webgpu could not be used; cpu serves/ });
  t.notOk(body.stages[0]?.batching.padded, 'no padding on the CPU it fell back to');
});
