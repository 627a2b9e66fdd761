/**
 * Every detection head on real weights: the shared yolox-nano with its raw head decoded inside the graph and
 * re-emitted in each head's layout (test/helpers/head-models.ts; the end-to-end forms with an in-graph
 * NonMaxSuppression). Read through its head, each must give Ocular's own yolox-nano reading on three shared
 * photos: the same labels in the same order, boxes within 0.5 px, scores within 1e-5. The models are written
 * under .cache/head-fixtures (git-ignored: they hold the shared weights).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest, type Json } from '../helpers/app.js';
import { YOLOX_HEAD_VARIANTS, wrapYoloxNano, writeModel } from '../helpers/head-models.js';
import { imagePath, modelPath, projectRoot, sharedTestOptions } from '../helpers/shared.js';

const PHOTOS = ['street_notice_sign.jpg', 'soccer_player.jpg', 'street_pedestrians_vtest_f300.jpg'];
const SHARED = ['models/yolox-nano/model.onnx', 'models/yolox-nano/model_static_b1.onnx', ...PHOTOS.map((p) => `images/${p}`)];

interface Detection {
  label: string;
  index: number;
  score: number;
  box: { x1: number; y1: number; x2: number; y2: number };
}

t.setTimeout(120_000);

t.test('each head reads its re-emitted yolox-nano as Ocular reads yolox-nano', sharedTestOptions(...SHARED), async (t) => {
  const dir = join(projectRoot, '.cache', 'head-fixtures');
  const base = sharedModel('yolox-nano');
  const models: Record<string, Json>[] = [{ ...base, batching: { maxBatchSize: 1, tune: 'off' } }];
  for (const variant of YOLOX_HEAD_VARIANTS) {
    const { model, head } = wrapYoloxNano(join(modelPath('yolox-nano'), '..'), variant);
    const { path, sha256 } = writeModel(dir, `yolox-nano-${variant}`, model);
    models.push({ ...base, name: variant, source: path, sha256, head: head as Json, batching: { maxBatchSize: 1, tune: 'off' } });
  }
  const { app } = await buildTestApp(t, { manifestPath: writeManifest(models) });
  const read = async (model: string, photo: string): Promise<Detection[]> => {
    const type = photo.endsWith('.png') ? 'image/png' : 'image/jpeg';
    const res = await app.inject({ method: 'POST', url: `/v1/models/${model}/predict`, headers: { 'content-type': type }, payload: readFileSync(imagePath(photo)) });
    if (res.statusCode !== 200) throw new Error(`${model} on ${photo}: ${res.statusCode} ${res.body.slice(0, 300)}`);
    return res.json<{ detections: Detection[] }>().detections;
  };
  for (const photo of PHOTOS) {
    const want = await read('yolox-nano', photo);
    t.ok(want.length >= 2, `${photo}: yolox-nano finds ${want.length} objects`);
    const table = want.map((d) => `${d.label} ${d.score.toFixed(4)} [${[d.box.x1, d.box.y1, d.box.x2, d.box.y2].map((v) => v.toFixed(1)).join(', ')}]`);
    t.comment(`${photo}, yolox-nano and every head:\n  ${table.join('\n  ')}`);
    for (const variant of YOLOX_HEAD_VARIANTS) {
      const got = await read(variant, photo);
      t.same(got.map((d) => d.label), want.map((d) => d.label), `${variant} on ${photo}: the same labels in the same order`);
      let box = 0;
      let score = 0;
      got.forEach((d, i) => {
        const w = want[i];
        if (w === undefined) return;
        score = Math.max(score, Math.abs(d.score - w.score));
        for (const k of ['x1', 'y1', 'x2', 'y2'] as const) box = Math.max(box, Math.abs(d.box[k] - w.box[k]));
      });
      t.ok(box <= 0.5, `${variant} on ${photo}: boxes within 0.5 px (max ${box.toFixed(5)})`);
      t.ok(score <= 1e-5, `${variant} on ${photo}: scores within 1e-5 (max ${score.toExponential(2)})`);
    }
  }
});
