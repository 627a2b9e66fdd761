/**
 * The hand-written handler Ocular is compared with (issue #4): what a user would write without Ocular. Fastify,
 * sharp with its defaults, one `session.run` per request on the event loop, no batching, no worker threads. It is
 * deliberately naive: do not optimise it, or the benchmark's ratios stop meaning anything. Its preprocessing is
 * the mobilenetv2 README's (flatten on white, shorter side 256 bilinear, centre crop 224, ImageNet mean/std,
 * NCHW RGB), so it answers the same top-5 as Ocular.
 *
 *   npx tsx scripts/naive-handler.ts --model ../shared/models/mobilenetv2-12-int8 --port 8081 [--intra-op-threads N]
 *
 * Prints `listening <url>` on stdout once the session is loaded and the server listens. Serves
 * POST /v1/models/mobilenetv2/predict (raw image body) and GET /healthz.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '../shared/models/mobilenetv2-12-int8' },
    port: { type: 'string', default: '8081' },
    host: { type: 'string', default: '127.0.0.1' },
    'intra-op-threads': { type: 'string', default: '0' },
  },
});

const MEAN = [0.485, 0.456, 0.406];
const STD = [0.229, 0.224, 0.225];
const labels = readFileSync(join(values.model, 'labels.txt'), 'utf8').split('\n');
const intra = Number(values['intra-op-threads']);
const session = await ort.InferenceSession.create(join(values.model, 'model.onnx'), intra > 0 ? { intraOpNumThreads: intra } : {});

const app = Fastify();
app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: 20 * 1024 * 1024 }, (_req, body, done) => done(null, body));

app.get('/healthz', async () => ({ status: 'ok' }));

app.post('/v1/models/mobilenetv2/predict', async (request) => {
  const image = request.body as Buffer;
  const { data, info } = await sharp(image)
    .flatten({ background: '#ffffff' })
    .removeAlpha()
    .resize({ width: 256, height: 256, fit: 'outside', kernel: 'linear' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const left = Math.floor((info.width - 224) / 2);
  const top = Math.floor((info.height - 224) / 2);
  const input = new Float32Array(3 * 224 * 224);
  for (let y = 0; y < 224; y++) {
    for (let x = 0; x < 224; x++) {
      const p = ((top + y) * info.width + left + x) * info.channels;
      for (let c = 0; c < 3; c++) input[c * 224 * 224 + y * 224 + x] = ((data[p + c] as number) / 255 - MEAN[c]!) / STD[c]!;
    }
  }
  const out = await session.run({ [session.inputNames[0]!]: new ort.Tensor('float32', input, [1, 3, 224, 224]) });
  const logits = out[session.outputNames[0]!]!.data as Float32Array;
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  const predictions = exps
    .map((e, index) => ({ label: labels[index] ?? String(index), index, score: e / sum }))
    .sort((a, b) => b.score - a.score)
    .slice(0, 5);
  return { model: 'mobilenetv2', width: info.width, height: info.height, predictions };
});

const address = await app.listen({ host: values.host, port: Number(values.port) });
process.stdout.write(`listening ${address}\n`);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    void app.close().then(() => process.exit(0));
  });
}
