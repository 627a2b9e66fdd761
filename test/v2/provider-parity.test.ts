/**
 * Task-level results agree between the CPU provider and CUDA: the same top-1 class for
 * mobilenetv2 on cat_chelsea.png, and yolox-nano boxes within 3 px on street_notice_sign.jpg.
 *
 * Where no other provider registers (the usual case on a machine without a GPU), the test skips and names each
 * provider's error text. It skips even under OCULAR_REQUIRE_SHARED=1: a missing GPU is not a missing shared file
 * (missing shared files still fail there, through sharedTestOptions).
 */
import { existsSync, readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import * as ort from 'onnxruntime-node';
import t from 'tap';
import type { ProviderName } from '../../src/config/providers.js';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { imagePath, modelPath, sharedTestOptions } from '../helpers/shared.js';

// WebGPU has its own, stricter suite (test/gpu/webgpu.test.ts: every shared model, boxes within 1 px), which CI runs
// on lavapipe; running it here too would double its minutes there.
const CANDIDATES: ProviderName[] = ['cuda'];
const FILES = ['models/mobilenetv2-12-int8/model.onnx', 'models/yolox-nano/model.onnx', 'images/cat_chelsea.png', 'images/street_notice_sign.jpg'];
const BOX_TOLERANCE_PX = 3;

/** The first candidate onnxruntime can create a session with, or every candidate's error text. */
async function probeProviders(): Promise<{ provider: ProviderName } | { errors: string[] }> {
  const errors: string[] = [];
  for (const provider of CANDIDATES) {
    try {
      const session = await ort.InferenceSession.create(modelPath('mobilenetv2-12-int8'), { executionProviders: [provider], logSeverityLevel: 4 });
      await session.release();
      return { provider };
    } catch (err) {
      errors.push(`${provider}: ${(err instanceof Error ? err.message : String(err)).trim()}`);
    }
  }
  return { errors };
}

const shared = sharedTestOptions(...FILES);
// Probed only where the model is there: a missing file must fail (or skip) as a missing file, not as a missing GPU.
const probe = shared.skip === undefined && existsSync(modelPath('mobilenetv2-12-int8')) ? await probeProviders() : undefined;
const options = shared.skip !== undefined ? shared : probe !== undefined && 'errors' in probe ? { skip: `no provider besides cpu registers here (${probe.errors.join('; ')})` } : {};

interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}
interface Answer {
  predictions?: { label: string; score: number }[];
  detections?: { label: string; score: number; box: Box }[];
}

async function predict(app: FastifyInstance, model: string, image: string, type: string): Promise<Answer> {
  const res = await app.inject({ method: 'POST', url: `/v1/models/${model}/predict`, headers: { 'content-type': type }, payload: readFileSync(imagePath(image)) });
  if (res.statusCode !== 200) throw new Error(`${model} on ${image}: ${res.statusCode} ${res.body.slice(0, 200)}`);
  return res.json<Answer>();
}

const boxDistance = (a: Box, b: Box): number => Math.max(Math.abs(a.x1 - b.x1), Math.abs(a.y1 - b.y1), Math.abs(a.x2 - b.x2), Math.abs(a.y2 - b.y2));

t.test('cpu and another provider give the same task results', options, async (t) => {
  const provider = probe !== undefined && 'provider' in probe ? probe.provider : undefined;
  if (provider === undefined) throw new Error(`shared files missing under ${FILES.join(', ')}`);
  const manifestPath = writeManifest([sharedModel('mobilenetv2'), sharedModel('yolox-nano')], t.testdir());
  const { app: cpu } = await buildTestApp(t, { manifestPath, config: { device: 'cpu', manifestWatchMs: 0 } });
  const { app: other } = await buildTestApp(t, { manifestPath, config: { providers: [provider], manifestWatchMs: 0 } });
  for (const name of ['mobilenetv2', 'yolox-nano']) {
    t.equal(other.ocular.models.get(name)?.stages[0]?.pool.info.provider, provider, `${name} runs on ${provider}`);
  }

  const cpuCat = await predict(cpu, 'mobilenetv2', 'cat_chelsea.png', 'image/png');
  const otherCat = await predict(other, 'mobilenetv2', 'cat_chelsea.png', 'image/png');
  t.equal(otherCat.predictions?.[0]?.label, cpuCat.predictions?.[0]?.label, `same top-1 (${cpuCat.predictions?.[0]?.label})`);

  const cpuDets = (await predict(cpu, 'yolox-nano', 'street_notice_sign.jpg', 'image/jpeg')).detections ?? [];
  const otherDets = (await predict(other, 'yolox-nano', 'street_notice_sign.jpg', 'image/jpeg')).detections ?? [];
  t.ok(cpuDets.length > 0, 'cpu finds something');
  // Detections near the score threshold may appear on one side only; every confident one must match.
  const matchAll = (from: typeof cpuDets, to: typeof cpuDets, what: string) => {
    for (const d of from.filter((x) => x.score >= 0.5)) {
      const best = Math.min(...to.filter((x) => x.label === d.label).map((x) => boxDistance(x.box, d.box)));
      t.ok(best <= BOX_TOLERANCE_PX, `${what}: ${d.label} ${d.score.toFixed(2)} matched within ${best.toFixed(2)} px`);
    }
  };
  matchAll(cpuDets, otherDets, `${provider} has cpu's`);
  matchAll(otherDets, cpuDets, `cpu has ${provider}'s`);
});
