/**
 * The semantic-segmentation task end to end: the shared DeepLabv3 (../shared/models/deeplabv3-mobilenetv2-voc) on
 * the shared photos through /v1 predict and the /v2 image BYTES form. Expected class fractions come from the
 * model's README; masks are read back the way pycocotools reads them (test/helpers/coco-rle.ts) and from the PNG
 * class map with sharp.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import sharp from 'sharp';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { decodeRle } from '../helpers/coco-rle.js';
import { storedPixels } from '../helpers/exif.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { binaryRequest, bytesElements, readResponse } from '../v2/helpers.js';

t.setTimeout(600_000);

const MODEL = 'models/deeplabv3-mobilenetv2-voc/model.onnx';

/** The README's fractions ("Verified here"), each within 0.01; street_pub_car.jpg is not among the shared photos. */
const README_FRACTIONS: Record<string, Record<string, number>> = {
  'cat_chelsea.png': { cat: 0.75, background: 0.25 },
  'dog_husky_cutout.png': { dog: 0.48, background: 0.52 },
  'person_astronaut.png': { person: 0.46, background: 0.54 },
  'street_notice_sign.jpg': { background: 0.81, car: 0.16, person: 0.035 },
  'soccer_player.jpg': { background: 0.93, person: 0.07 },
};

/** Eight photos for the batch, with their sizes from images/SOURCES.md. */
const PHOTOS = [
  { file: 'cat_chelsea.png', width: 451, height: 300 },
  { file: 'coffee_cup.png', width: 600, height: 400 },
  { file: 'dog_husky_cutout.png', width: 194, height: 222 },
  { file: 'fruits.jpg', width: 512, height: 480 },
  { file: 'soccer_player.jpg', width: 548, height: 342 },
  { file: 'street_notice_sign.jpg', width: 800, height: 600 },
  { file: 'person_astronaut.png', width: 512, height: 512 },
  { file: 'robin.jpg', width: 380, height: 254 },
] as const;

const SHARED = [MODEL, ...PHOTOS.map((p) => `images/${p.file}`)];

interface SegClass {
  label: string;
  index: number;
  area: number;
  fraction: number;
  box: { x1: number; y1: number; x2: number; y2: number };
  mask: { size: [number, number]; counts: string };
}
interface SegAnswer {
  model?: string;
  version?: string;
  width: number;
  height: number;
  classes: SegClass[];
}

const photo = (file: string): Buffer => readFileSync(imagePath(file));

function predict(app: FastifyInstance, model: string, body: Buffer, query = ''): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/models/${model}/predict${query}`, headers: { 'content-type': 'application/octet-stream' }, payload: body });
}

async function multipart(app: FastifyInstance, model: string, files: Buffer[], query = ''): Promise<LightMyRequestResponse> {
  const form = new FormData();
  files.forEach((f, i) => form.append('file', new Blob([f], { type: 'application/octet-stream' }), `f${i}`));
  const request = new Request('http://localhost/', { method: 'POST', body: form });
  const payload = Buffer.from(await request.arrayBuffer());
  return app.inject({ method: 'POST', url: `/v1/models/${model}/predict${query}`, headers: { 'content-type': request.headers.get('content-type') ?? '' }, payload });
}

/** The PNG class map's pixels (one byte each) and size. */
async function readPng(body: Buffer): Promise<{ data: Buffer; width: number; height: number }> {
  const meta = await sharp(body).metadata();
  if (meta.channels !== 1 || meta.depth !== 'uchar') throw new Error(`the PNG has ${meta.channels} channels of ${meta.depth}`);
  // b-w: sharp may widen a greyscale image to sRGB when it writes raw pixels.
  const { data, info } = await sharp(body).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

t.test('semantic segmentation with the shared DeepLabv3', sharedTestOptions(...SHARED), async (t) => {
  const seg = sharedModel('deeplabv3-seg');
  // A batch of 8 forms when 8 images wait together: the limit raised to 8, a short delay to let them gather.
  const nearest = { ...seg, batching: { maxBatchSize: 8, maxQueueDelayMs: 50, maxQueueSize: 64 } };
  const bilinear = { ...seg, name: 'deeplabv3-seg-bilinear', options: { upsample: 'bilinear', minArea: 0 } };
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([nearest, bilinear]) });

  t.test("the shared photos' class fractions are the README's, within 0.01, at the upright image's size", async (t) => {
    for (const [file, want] of Object.entries(README_FRACTIONS)) {
      const res = await predict(app, 'deeplabv3-seg', photo(file));
      t.equal(res.statusCode, 200, res.body.slice(0, 200));
      const body = res.json<SegAnswer>();
      const size = PHOTOS.find((p) => p.file === file);
      t.same([body.width, body.height], [size?.width, size?.height], `${file}: the image's size`);
      const got = Object.fromEntries(body.classes.map((c) => [c.label, c.fraction]));
      for (const [label, fraction] of Object.entries(want)) {
        t.ok(Math.abs((got[label] ?? 0) - fraction) <= 0.01, `${file}: ${label} ${got[label]} within 0.01 of ${fraction}`);
      }
      for (const c of body.classes) {
        t.equal(c.fraction, c.area / (body.width * body.height), `${file}: ${c.label}'s fraction is its area over the pixels`);
        t.same(c.mask.size, [body.height, body.width], `${file}: ${c.label}'s mask is [height, width]`);
      }
      t.equal(body.classes.reduce((n, c) => n + c.area, 0), body.width * body.height, `${file}: every pixel has one class`);
    }
    const res = await predict(app, 'deeplabv3-seg-bilinear', photo('cat_chelsea.png'));
    const cat = res.json<SegAnswer>().classes.find((c) => c.label === 'cat');
    t.ok(cat !== undefined && Math.abs(cat.fraction - 0.75) <= 0.01, `bilinear: cat ${cat?.fraction} within 0.01 of 0.75`);
  });

  t.test('each RLE mask decoded equals the PNG class map pixel for pixel, with boxes around its pixels', async (t) => {
    for (const model of ['deeplabv3-seg', 'deeplabv3-seg-bilinear']) {
      for (const file of ['street_notice_sign.jpg', 'dog_husky_cutout.png']) {
        const json = (await predict(app, model, photo(file))).json<SegAnswer>();
        const res = await predict(app, model, photo(file), '?format=png');
        t.equal(res.statusCode, 200);
        t.match(res.headers['content-type'], /^image\/png/);
        const labels = String(res.headers['ocular-mask-labels']);
        t.equal(labels, json.classes.map((c) => `${c.index}=${encodeURIComponent(c.label)}`).join(','), `${model} ${file}: the header names the classes`);
        t.equal(res.headers['ocular-mask-void'], '255');
        const png = await readPng(res.rawPayload);
        t.same([png.width, png.height], [json.width, json.height], `${model} ${file}: the PNG has the image's size`);
        const covered = new Uint8Array(png.data.length);
        for (const c of json.classes) {
          const mask = decodeRle(c.mask);
          let same = true;
          let [x1, y1, x2, y2] = [png.width, png.height, 0, 0];
          for (let i = 0; i < mask.length; i++) {
            if ((mask[i] === 1) !== (png.data[i] === c.index)) same = false;
            if (mask[i] === 1) {
              covered[i] = (covered[i] as number) + 1;
              const [x, y] = [i % png.width, Math.floor(i / png.width)];
              [x1, y1, x2, y2] = [Math.min(x1, x), Math.min(y1, y), Math.max(x2, x + 1), Math.max(y2, y + 1)];
            }
          }
          t.ok(same, `${model} ${file}: ${c.label}'s RLE is the PNG's pixels of class ${c.index}`);
          t.same(c.box, { x1, y1, x2, y2 }, `${model} ${file}: ${c.label}'s box bounds its mask`);
        }
        t.ok(covered.every((n) => n === 1), `${model} ${file}: the masks cover every pixel once`);
      }
    }
  });

  t.test('EXIF orientations 1-8 give the same upright mask at the upright size', async (t) => {
    const { data, info } = await sharp(photo('cat_chelsea.png')).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    let upright: { data: Buffer; width: number; height: number } | undefined;
    for (let o = 1; o <= 8; o++) {
      const stored = storedPixels(data, info.width, info.height, o);
      const bytes = await sharp(stored.pixels, { raw: { width: stored.width, height: stored.height, channels: 3 } }).withMetadata({ orientation: o }).png().toBuffer();
      const res = await predict(app, 'deeplabv3-seg', bytes, '?format=png');
      t.equal(res.statusCode, 200);
      const png = await readPng(res.rawPayload);
      t.same([png.width, png.height], [info.width, info.height], `orientation ${o}: the upright size`);
      upright ??= png;
      t.ok(png.data.equals(upright.data), `orientation ${o}: the upright mask`);
      const json = (await predict(app, 'deeplabv3-seg', bytes)).json<SegAnswer>();
      t.same([json.width, json.height], [info.width, info.height], `orientation ${o}: the JSON answer's size`);
    }
  });

  t.test('a batch of 8 (multipart) answers as 8 single requests do, in order', async (t) => {
    const files = PHOTOS.map((p) => photo(p.file));
    const res = await multipart(app, 'deeplabv3-seg', files);
    t.equal(res.statusCode, 200, res.body.slice(0, 200));
    const { results } = res.json<{ results: SegAnswer[] }>();
    t.equal(results.length, 8);
    for (const [i, p] of PHOTOS.entries()) {
      const { model: _m, version: _v, ...single } = (await predict(app, 'deeplabv3-seg', files[i] as Buffer)).json<SegAnswer>();
      t.same(results[i], single, `slot ${i} (${p.file}) equals its single request`);
    }
    const png = await multipart(app, 'deeplabv3-seg', files.slice(0, 2), '?format=png');
    t.equal(png.statusCode, 400, 'format=png takes one image, not multipart');
    t.equal(png.json<{ code: string }>().code, 'INVALID_PARAMETER');
  });

  t.test('classes= restricts the answer and min_area drops specks', async (t) => {
    const street = photo('street_notice_sign.jpg');
    const some = (await predict(app, 'deeplabv3-seg', street, '?classes=person,7')).json<SegAnswer>();
    t.same(some.classes.map((c) => c.label), ['car', 'person'], 'by label and by index, in class order');
    const astronaut = photo('person_astronaut.png');
    const all = (await predict(app, 'deeplabv3-seg', astronaut)).json<SegAnswer>();
    const speck = all.classes.find((c) => c.label === 'motorbike');
    t.ok(speck !== undefined && speck.area < 1000, `a speck of motorbike (${speck?.area} px)`);
    const big = (await predict(app, 'deeplabv3-seg', astronaut, '?min_area=1000')).json<SegAnswer>();
    t.same(big.classes.map((c) => c.label), ['background', 'person'], 'min_area=1000 drops it');
    const png = await predict(app, 'deeplabv3-seg', photo('cat_chelsea.png'), '?format=png&classes=cat');
    t.equal(png.headers['ocular-mask-labels'], '8=cat');
    const map = await readPng(png.rawPayload);
    t.ok(map.data.every((v) => v === 8 || v === 255), 'pixels of classes left out are void (255)');
    for (const [query, what] of [
      ['?classes=unicorn', 'an unknown label'],
      ['?min_area=-1', 'a negative min_area'],
      ['?format=gif', 'an unknown format'],
      ['?top_k=3', "another task's parameter"],
    ]) {
      const res = await predict(app, 'deeplabv3-seg', street, query);
      t.equal(res.statusCode, 400, `${what} is 400`);
      t.equal(res.json<{ code: string }>().code, 'INVALID_PARAMETER');
    }
  });

  t.test('the /v2 image BYTES form answers each image\'s /v1 JSON in a BYTES output "result"', async (t) => {
    const meta = (await app.inject({ method: 'GET', url: '/v2/models/deeplabv3-seg' })).json<{ inputs: { name: string; datatype: string }[]; outputs: { name: string; datatype: string }[] }>();
    t.same(meta.inputs.map((i) => [i.name, i.datatype]), [['image', 'BYTES']]);
    t.same(meta.outputs.map((o) => [o.name, o.datatype]), [['result', 'BYTES']]);
    const images = [photo('cat_chelsea.png'), photo('soccer_player.jpg')];
    const { body, headers } = binaryRequest(
      [{ name: 'image', datatype: 'BYTES', shape: [2], bytes: bytesElements(images) }],
      { parameters: { classes: 'person,cat' } },
    );
    const res = await app.inject({ method: 'POST', url: '/v2/models/deeplabv3-seg/infer', headers, payload: body });
    t.equal(res.statusCode, 200, res.body.slice(0, 300));
    const { json } = readResponse(res.rawPayload, res.headers['inference-header-content-length']);
    const out = json.outputs[0];
    t.equal(out?.name, 'result');
    const results = (out?.data as string[]).map((s) => JSON.parse(s) as SegAnswer);
    for (const [i, image] of images.entries()) {
      const { model: _m, version: _v, ...v1 } = (await predict(app, 'deeplabv3-seg', image, '?classes=person,cat')).json<SegAnswer>();
      t.same(results[i], v1, `image ${i}: the /v1 answer`);
    }
  });

  t.test('the OpenAPI document describes the answer and the parameters', async (t) => {
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<{ paths: Record<string, unknown> }>();
    const text = JSON.stringify(doc.paths['/v1/models/{name}/predict']);
    for (const word of ['SegmentationResult', '"min_area"', 'format=png', 'Ocular-Mask-Labels']) t.ok(text.includes(word), `it names ${word}`);
  });
});

t.test('masks over OCULAR_MAX_RESPONSE_BYTES are refused 422 RESPONSE_TOO_LARGE', sharedTestOptions(MODEL, 'images/street_notice_sign.jpg'), async (t) => {
  // Two files of one request batch together (no tuning, batches of 2, a wait for the second), so that their masks
  // are built at the same time: the second to finish must find the answer full even so (it once took the room it had
  // seen before either was built, and both were answered, on a loaded runner).
  const entry = sharedModel('deeplabv3-seg');
  const batched = { ...entry, batching: { ...(entry['batching'] as object | undefined), maxBatchSize: 2, maxQueueDelayMs: 500, tune: 'off' } };
  const { app } = await buildTestApp(t, { manifestPath: writeManifest([batched]), config: { maxResponseBytes: 1500 } });
  const res = await predict(app, 'deeplabv3-seg', photo('street_notice_sign.jpg'));
  t.equal(res.statusCode, 422, res.body.slice(0, 200));
  t.equal(res.json<{ code: string }>().code, 'RESPONSE_TOO_LARGE');
  t.match(res.json<{ message: string }>().message, /OCULAR_MAX_RESPONSE_BYTES/);
  const small = await predict(app, 'deeplabv3-seg', photo('street_notice_sign.jpg'), '?classes=person');
  t.equal(small.statusCode, 200, 'fewer classes fit');
  // Two files share one answer: each fits alone, together they do not.
  const form = await multipart(app, 'deeplabv3-seg', [photo('street_notice_sign.jpg'), photo('street_notice_sign.jpg')], '?classes=person');
  const slots = form.json<{ results: ({ error?: { code: string } } & Partial<SegAnswer>)[] }>().results;
  t.same(
    slots.map((s) => s.error?.code ?? 'ok').sort(),
    ['RESPONSE_TOO_LARGE', 'ok'],
    'the second file to finish finds the answer full',
  );
});
