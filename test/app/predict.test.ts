/**
 * POST /v1/models/{name}/predict end to end: the real models in ../shared on real photos, through app.inject.
 * Expected answers come from the models' READMEs (../shared/models/<model>/README.md).
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import sharp from 'sharp';
import t, { type Test } from 'tap';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';

const MOBILENET = 'models/mobilenetv2-12-int8/model.onnx';
const YOLOX = 'models/yolox-nano/model.onnx';
const ULTRAFACE = 'models/ultraface-rfb-320/model.onnx';
const OCR_DET = 'models/ppocrv4-det/model.onnx';
const OCR_REC = 'models/ppocrv4-rec/model.onnx';

/** The eight different photos of the multipart test, each with its size from images/SOURCES.md. */
const PHOTOS = [
  { file: 'cat_chelsea.png', type: 'image/png', width: 451, height: 300 },
  { file: 'coffee_cup.png', type: 'image/png', width: 600, height: 400 },
  { file: 'dog_husky_cutout.png', type: 'image/png', width: 194, height: 222 },
  { file: 'fruits.jpg', type: 'image/jpeg', width: 512, height: 480 },
  { file: 'soccer_player.jpg', type: 'image/jpeg', width: 548, height: 342 },
  { file: 'street_notice_sign.jpg', type: 'image/jpeg', width: 800, height: 600 },
  { file: 'person_astronaut.png', type: 'image/png', width: 512, height: 512 },
  { file: 'robin.jpg', type: 'image/jpeg', width: 380, height: 254 },
] as const;

const SHARED = [MOBILENET, YOLOX, ULTRAFACE, OCR_DET, OCR_REC, ...PHOTOS.map((p) => `images/${p.file}`), 'images/text_no_parking.jpg'];

interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}
interface Prediction {
  label: string;
  index: number;
  score: number;
}
interface Detection extends Prediction {
  box: Box;
}
interface OcrLine {
  text: string;
  score: number;
  polygon: [number, number][];
  box: Box;
}
interface ImageAnswer {
  width: number;
  height: number;
  predictions?: Prediction[];
  detections?: Detection[];
  lines?: OcrLine[];
}
interface Answer extends ImageAnswer {
  model: string;
  version: string;
}
interface ErrorBody {
  code: string;
  message: string;
}
type Slot = ImageAnswer | { error: ErrorBody };
interface MultipartAnswer {
  model: string;
  version: string;
  results: Slot[];
}

const photo = (name: string): Buffer => readFileSync(imagePath(name));

function predict(app: FastifyInstance, model: string, body: Buffer, opts: { query?: string; type?: string; headers?: Record<string, string> } = {}) {
  return app.inject({
    method: 'POST',
    url: `/v1/models/${model}/predict${opts.query !== undefined ? `?${opts.query}` : ''}`,
    headers: { 'content-type': opts.type ?? 'image/jpeg', ...opts.headers },
    payload: body,
  });
}

interface Part {
  name: string;
  data: Buffer;
  type: string;
}

/** Serialises a multipart/form-data body with the platform's FormData (undici), as a browser would send it. */
async function multipart(parts: Part[], fields: Record<string, string> = {}): Promise<{ payload: Buffer; contentType: string }> {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  for (const p of parts) form.append('file', new Blob([p.data], { type: p.type }), p.name);
  const request = new Request('http://localhost/', { method: 'POST', body: form });
  const payload = Buffer.from(await request.arrayBuffer());
  return { payload, contentType: request.headers.get('content-type') ?? '' };
}

async function predictMultipart(app: FastifyInstance, model: string, parts: Part[], fields: Record<string, string> = {}) {
  const { payload, contentType } = await multipart(parts, fields);
  return app.inject({ method: 'POST', url: `/v1/models/${model}/predict`, headers: { 'content-type': contentType }, payload });
}

/** Asserts a 4xx/5xx answer with the given status and code, whose body is exactly { code, message }. */
function isError(t: Test, res: LightMyRequestResponse, status: number, code: string): void {
  t.equal(res.statusCode, status, `status ${status} (${res.body.slice(0, 200)})`);
  const body = res.json<Record<string, unknown>>();
  t.same(Object.keys(body).sort(), ['code', 'message'], 'the error body is exactly { code, message }');
  t.equal(body['code'], code);
  t.type(body['message'], 'string');
  t.ok(String(body['message']).length > 0, 'the message says something');
}

const near = (a: number, b: number, tol: number): boolean => Math.abs(a - b) <= tol;
const corners = (b: Box): number[] => [b.x1, b.y1, b.x2, b.y2];
const boxNear = (b: Box, expected: number[], tol: number): boolean => corners(b).every((v, i) => near(v, expected[i] as number, tol));
const describeDet = (d: Detection): string => `${d.label} ${d.score.toFixed(3)} [${corners(d.box).map((v) => v.toFixed(0)).join(',')}]`;

/** Parses `name;dur=1.23, ...` into { name: ms }. */
function parseServerTiming(header: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const entry of header.split(',')) {
    const [name, ...params] = entry.trim().split(';');
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith('dur='));
    if (name !== undefined && dur !== undefined) out[name] = Number(dur.slice(4));
  }
  return out;
}

/** A manifest with only mobilenetv2, so small apps load quickly. */
function mobilenetOnlyManifest(dir: string): string {
  return writeManifest([sharedModel('mobilenetv2')], dir);
}

t.test('predictions on real photos', sharedTestOptions(...SHARED), async (t) => {
  const { app } = await buildTestApp(t);

  t.test('mobilenetv2 puts the right class top-1', async (t) => {
    const cat = await predict(app, 'mobilenetv2', photo('cat_chelsea.png'), { type: 'image/png' });
    t.equal(cat.statusCode, 200, cat.body.slice(0, 200));
    const catBody = cat.json<Answer>();
    t.equal(catBody.predictions?.[0]?.label, 'Egyptian cat', 'cat_chelsea.png: Egyptian cat top-1');
    t.equal(catBody.predictions?.length, 5, 'the manifest topK (5) by default');
    const scores = catBody.predictions?.map((p) => p.score) ?? [];
    t.same(scores, [...scores].sort((a, b) => b - a), 'predictions in descending score order');

    const coffee = await predict(app, 'mobilenetv2', photo('coffee_cup.png'), { type: 'image/png' });
    t.equal(coffee.statusCode, 200);
    t.equal(coffee.json<Answer>().predictions?.[0]?.label, 'espresso', 'coffee_cup.png: espresso top-1');
  });

  t.test('top_k picks how many classes come back; a bad top_k is 400 INVALID_PARAMETER', async (t) => {
    const one = await predict(app, 'mobilenetv2', photo('cat_chelsea.png'), { type: 'image/png', query: 'top_k=1' });
    t.equal(one.statusCode, 200);
    const preds = one.json<Answer>().predictions ?? [];
    t.equal(preds.length, 1, 'top_k=1: one prediction');
    t.equal(preds[0]?.label, 'Egyptian cat');

    for (const bad of ['top_k=0', 'top_k=abc', 'top_k=1.5']) {
      isError(t, await predict(app, 'mobilenetv2', photo('cat_chelsea.png'), { type: 'image/png', query: bad }), 400, 'INVALID_PARAMETER');
    }
  });

  t.test('a query parameter the task does not take is refused', async (t) => {
    isError(
      t,
      await predict(app, 'mobilenetv2', photo('cat_chelsea.png'), { type: 'image/png', query: 'score_threshold=0.5' }),
      400,
      'INVALID_PARAMETER',
    );
    // A parameter no task takes (here a misspelling) is refused too, rather than silently ignored.
    isError(t, await predict(app, 'yolox-nano', photo('cat_chelsea.png'), { query: 'score_treshold=0.9' }), 400, 'INVALID_PARAMETER');
    isError(t, await predict(app, 'ocr', photo('text_no_parking.jpg'), { query: 'top_k=3' }), 400, 'INVALID_PARAMETER');
  });

  t.test("an unknown query key's message lists the task's keys and the closest one", async (t) => {
    const typo = await predict(app, 'yolox-nano', photo('cat_chelsea.png'), { query: 'score_treshold=0.9' });
    t.equal(
      typo.json<ErrorBody>().message,
      'unknown query parameter "score_treshold": this model\'s task takes "score_threshold", "iou_threshold", "max_detections" or "classes"; did you mean "score_threshold"?',
    );
    const other = await predict(app, 'mobilenetv2', photo('cat_chelsea.png'), { type: 'image/png', query: 'score_threshold=0.5' });
    t.equal(other.json<ErrorBody>().message, 'unknown query parameter "score_threshold": this model\'s task takes "top_k"');
    const none = await predict(app, 'ocr', photo('text_no_parking.jpg'), { query: 'top_k=3' });
    t.equal(none.json<ErrorBody>().message, 'unknown query parameter "top_k": this model\'s task takes no query parameters');
  });

  t.test('yolox-nano finds the people and the car of street_notice_sign.jpg', async (t) => {
    const res = await predict(app, 'yolox-nano', photo('street_notice_sign.jpg'));
    t.equal(res.statusCode, 200);
    const dets = res.json<Answer>().detections ?? [];
    const seen = dets.map(describeDet).join('; ');
    const person = dets.find((d) => d.label === 'person' && near(d.score, 0.91, 0.02));
    const car = dets.find((d) => d.label === 'car' && near(d.score, 0.88, 0.02));
    const person2 = dets.find((d) => d.label === 'person' && near(d.score, 0.82, 0.02));
    t.ok(person, `person 0.91 (saw ${seen})`);
    t.ok(car, `car 0.88 (saw ${seen})`);
    t.ok(person2, `person 0.82 (saw ${seen})`);
    for (const d of dets) {
      t.ok(d.score >= 0.3, 'nothing under the manifest threshold 0.3');
      t.ok(d.box.x1 >= 0 && d.box.y1 >= 0 && d.box.x2 <= 800 && d.box.y2 <= 600 && d.box.x1 < d.box.x2 && d.box.y1 < d.box.y2, 'box inside the image');
    }

    const people = await predict(app, 'yolox-nano', photo('street_notice_sign.jpg'), { query: 'classes=person' });
    t.equal(people.statusCode, 200);
    const onlyPeople = people.json<Answer>().detections ?? [];
    t.ok(onlyPeople.length > 0, 'classes=person still finds people');
    t.ok(onlyPeople.every((d) => d.label === 'person'), 'classes=person keeps only people');
    t.equal(onlyPeople.length, dets.filter((d) => d.label === 'person').length, 'and every person');

    const confident = await predict(app, 'yolox-nano', photo('street_notice_sign.jpg'), { query: 'score_threshold=0.85' });
    t.equal(confident.statusCode, 200);
    const high = confident.json<Answer>().detections ?? [];
    t.ok(high.every((d) => d.score >= 0.85), 'score_threshold=0.85: nothing under it');
    t.ok(high.some((d) => d.label === 'person' && near(d.score, 0.91, 0.02)), 'keeps person 0.91');
    t.ok(high.some((d) => d.label === 'car' && near(d.score, 0.88, 0.02)), 'keeps car 0.88');
    t.notOk(high.some((d) => near(d.score, 0.82, 0.02)), 'drops person 0.82');
    t.ok(high.length < dets.length, 'fewer detections than at the default threshold');

    isError(t, await predict(app, 'yolox-nano', photo('street_notice_sign.jpg'), { query: 'score_threshold=2' }), 400, 'INVALID_PARAMETER');
    isError(t, await predict(app, 'yolox-nano', photo('street_notice_sign.jpg'), { query: 'top_k=1' }), 400, 'INVALID_PARAMETER');
  });

  t.test('yolox-nano puts the player of soccer_player.jpg at (59,58)-(473,334)', async (t) => {
    const res = await predict(app, 'yolox-nano', photo('soccer_player.jpg'));
    t.equal(res.statusCode, 200);
    const body = res.json<Answer>();
    const dets = body.detections ?? [];
    const player = dets.find((d) => d.label === 'person' && boxNear(d.box, [59, 58, 473, 334], 3));
    t.ok(player, `the player within 3 px (saw ${dets.map(describeDet).join('; ')})`);
    if (player !== undefined) t.ok(near(player.score, 0.85, 0.02), `player score ${player.score} ~ 0.85`);
    t.ok(dets.some((d) => d.label === 'sports ball' && near(d.score, 0.89, 0.02)), 'the ball 0.89');
    t.same([body.width, body.height], [548, 342]);
  });

  t.test('ultraface finds the one face of person_astronaut.png', async (t) => {
    const res = await predict(app, 'ultraface', photo('person_astronaut.png'), { type: 'image/png' });
    t.equal(res.statusCode, 200);
    const dets = res.json<Answer>().detections ?? [];
    t.equal(dets.length, 1, `one face (saw ${dets.map(describeDet).join('; ')})`);
    const face = dets[0];
    t.ok(face !== undefined && boxNear(face.box, [180, 62, 268, 174], 3), 'near [180,62,268,174] within 3 px');
    t.ok(face !== undefined && face.score > 0.95, 'with a high score');
  });

  t.test('ocr reads NO PARKING twice', async (t) => {
    const res = await predict(app, 'ocr', photo('text_no_parking.jpg'));
    t.equal(res.statusCode, 200);
    const body = res.json<Answer>();
    const lines = body.lines ?? [];
    t.same(
      lines.map((l) => l.text.replace(/\s+/g, '').toUpperCase()),
      ['NOPARKING', 'NOPARKING'],
      `two lines reading NOPARKING (read ${JSON.stringify(lines.map((l) => l.text))})`,
    );
    for (const line of lines) {
      t.equal(line.polygon.length, 4, 'a 4-point polygon');
      t.ok(line.polygon.every((p) => p.length === 2 && p.every(Number.isFinite)), 'of finite (x, y) points');
      const xs = line.polygon.map((p) => p[0]);
      const ys = line.polygon.map((p) => p[1]);
      t.same(corners(line.box), [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)], 'the box bounds the polygon');
      t.ok(line.box.x1 >= 0 && line.box.y1 >= 0 && line.box.x2 <= 1280 && line.box.y2 <= 960, 'inside the image');
      t.ok(line.score > 0.5 && line.score <= 1, 'a score in (0.5, 1]');
    }
    t.same([body.width, body.height], [1280, 960]);
  });

  t.test('every answer names the model and version and the upright image size', async (t) => {
    const cases = [
      { model: 'mobilenetv2', version: '12-int8', file: 'cat_chelsea.png', size: [451, 300] },
      { model: 'yolox-nano', version: '1', file: 'street_notice_sign.jpg', size: [800, 600] },
      { model: 'ultraface', version: 'rfb-320', file: 'person_astronaut.png', size: [512, 512] },
      { model: 'ocr', version: 'ppocrv4-1', file: 'text_no_parking.jpg', size: [1280, 960] },
    ];
    for (const c of cases) {
      const res = await predict(app, c.model, photo(c.file));
      t.equal(res.statusCode, 200, `${c.model} on ${c.file}`);
      const body = res.json<Answer>();
      t.same([body.model, body.version, body.width, body.height], [c.model, c.version, ...c.size], `${c.model}: model, version, size`);
    }
  });

  t.test('the size is that of the EXIF-upright image', async (t) => {
    // Store soccer_player.jpg (548x342) turned a quarter counter-clockwise, 342x548, tagged EXIF orientation 6
    // ("rotate 90° clockwise to view"): viewed upright it is the original photo again.
    const stored = await sharp(photo('soccer_player.jpg')).rotate(-90).withMetadata({ orientation: 6 }).jpeg({ quality: 95 }).toBuffer();
    const meta = await sharp(stored).metadata();
    t.same([meta.width, meta.height, meta.orientation], [342, 548, 6], 'stored on its side, with the EXIF tag');
    const res = await predict(app, 'yolox-nano', stored);
    t.equal(res.statusCode, 200);
    const body = res.json<Answer>();
    t.same([body.width, body.height], [548, 342], 'the answer describes the upright image');
    const dets = body.detections ?? [];
    // Re-encoding moves pixels a little: a looser tolerance than the README's 3 px.
    t.ok(
      dets.some((d) => d.label === 'person' && boxNear(d.box, [59, 58, 473, 334], 8)),
      `the player in upright coordinates (saw ${dets.map(describeDet).join('; ')})`,
    );
  });

  t.test('Server-Timing has every stage, each >= 0, summing to at most the total', async (t) => {
    for (const [model, file] of [
      ['mobilenetv2', 'cat_chelsea.png'],
      ['yolox-nano', 'soccer_player.jpg'],
      ['ultraface', 'person_astronaut.png'],
      ['ocr', 'text_no_parking.jpg'],
    ] as const) {
      const res = await predict(app, model, photo(file));
      t.equal(res.statusCode, 200);
      const header = res.headers['server-timing'];
      t.type(header, 'string', `${model}: Server-Timing present`);
      const timing = parseServerTiming(String(header));
      t.same(Object.keys(timing).sort(), ['inference', 'postprocess', 'preprocess', 'queue', 'total'], `${model}: the five entries`);
      for (const [name, ms] of Object.entries(timing)) t.ok(Number.isFinite(ms) && ms >= 0, `${model}: ${name}=${ms} >= 0`);
      const parts = (timing['preprocess'] ?? 0) + (timing['queue'] ?? 0) + (timing['inference'] ?? 0) + (timing['postprocess'] ?? 0);
      // Each entry is rounded to 0.01 ms: allow the rounding of five numbers.
      t.ok(parts <= (timing['total'] ?? 0) + 0.05, `${model}: stages ${parts.toFixed(2)} <= total ${timing['total']}`);
      t.ok((timing['inference'] ?? 0) > 0, `${model}: inference took some time`);
    }
  });

  t.test('X-Request-Id is echoed when sane and replaced when not', async (t) => {
    const body = photo('cat_chelsea.png');
    const sane = await predict(app, 'mobilenetv2', body, { headers: { 'x-request-id': 'abc-123' } });
    t.equal(sane.headers['x-request-id'], 'abc-123', 'echoed');

    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
    for (const [what, given] of [
      ['spaces', 'abc 123'],
      ['300 characters', 'a'.repeat(300)],
      ['a newline-looking value', 'abc%0d%0aSet-Cookie:x'],
    ] as const) {
      const res = await predict(app, 'mobilenetv2', body, { headers: { 'x-request-id': given } });
      t.equal(res.statusCode, 200);
      const id = res.headers['x-request-id'];
      t.not(id, given, `${what}: not echoed`);
      t.match(String(id), uuid, `${what}: a generated id instead`);
    }
    const none = await predict(app, 'mobilenetv2', body);
    t.match(String(none.headers['x-request-id']), uuid, 'a generated id when none is given');
    const again = await predict(app, 'mobilenetv2', body);
    t.not(again.headers['x-request-id'], none.headers['x-request-id'], 'a fresh one per request');
  });

  t.test('a multipart request of 8 photos answers as 8 single requests do, in order', async (t) => {
    const parts = PHOTOS.map((p) => ({ name: p.file, data: photo(p.file), type: p.type }));
    for (const model of ['mobilenetv2', 'yolox-nano']) {
      const res = await predictMultipart(app, model, parts);
      t.equal(res.statusCode, 200, res.body.slice(0, 200));
      const body = res.json<MultipartAnswer>();
      t.equal(body.model, model);
      t.equal(body.results.length, PHOTOS.length, 'one result per file');
      for (const [i, p] of PHOTOS.entries()) {
        const single = await predict(app, model, photo(p.file), { type: p.type });
        t.equal(single.statusCode, 200);
        const { model: _m, version: _v, ...expected } = single.json<Answer>();
        const slot = body.results[i] as ImageAnswer;
        t.same([slot.width, slot.height], [p.width, p.height], `${model} slot ${i} is ${p.file}`);
        // Batched and single runs agree (READMEs: max |diff| 0); compare scores with a tolerance anyway.
        const key = model === 'mobilenetv2' ? 'predictions' : 'detections';
        const got = slot[key] ?? [];
        const want = expected[key] ?? [];
        t.same(
          got.map((d) => d.label),
          want.map((d) => d.label),
          `${model} slot ${i} (${p.file}): same labels in the same order`,
        );
        t.ok(
          got.length === want.length && got.every((d, j) => near(d.score, (want[j] as Prediction).score, 1e-4)),
          `${model} slot ${i}: same scores`,
        );
      }
    }
  });

  t.test('a bad file among good ones gets an error slot; the others answer', async (t) => {
    const html = Buffer.from('<!doctype html><html><body>not an image</body></html>');
    const truncated = photo('soccer_player.jpg').subarray(0, 2000);
    const res = await predictMultipart(app, 'mobilenetv2', [
      { name: 'cat.png', data: photo('cat_chelsea.png'), type: 'image/png' },
      { name: 'page.jpg', data: html, type: 'image/jpeg' },
      { name: 'coffee.png', data: photo('coffee_cup.png'), type: 'image/png' },
      { name: 'cut.jpg', data: truncated, type: 'image/jpeg' },
    ]);
    t.equal(res.statusCode, 200);
    const results = res.json<MultipartAnswer>().results;
    t.equal(results.length, 4);
    t.equal((results[0] as ImageAnswer).predictions?.[0]?.label, 'Egyptian cat', 'slot 0 answers');
    t.same(results[1], { error: { code: 'UNSUPPORTED_MEDIA_TYPE', message: String((results[1] as { error?: ErrorBody }).error?.message) } });
    t.equal((results[2] as ImageAnswer).predictions?.[0]?.label, 'espresso', 'slot 2 answers');
    const cut = results[3] as { error?: ErrorBody };
    t.equal(cut.error?.code, 'IMAGE_DECODE_FAILED', 'slot 3: the truncated JPEG');
    t.same(Object.keys(cut.error ?? {}).sort(), ['code', 'message']);
  });

  t.test('multipart with fields but no file is 400 NO_FILE', async (t) => {
    isError(t, await predictMultipart(app, 'mobilenetv2', [], { note: 'no image here' }), 400, 'NO_FILE');
  });

  t.test('a raw body that is not an image', async (t) => {
    isError(t, await predict(app, 'mobilenetv2', Buffer.from('hello'), { type: 'text/plain' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
    isError(
      t,
      await predict(app, 'mobilenetv2', Buffer.from('{"image":"x"}'), { type: 'application/json' }),
      415,
      'UNSUPPORTED_MEDIA_TYPE',
    );
    const html = Buffer.from('<!doctype html><html><body><img src=x onerror=alert(1)></body></html>');
    isError(t, await predict(app, 'mobilenetv2', html, { type: 'image/jpeg' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>');
    isError(t, await predict(app, 'mobilenetv2', svg, { type: 'image/svg+xml' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
  });

  t.test('a truncated JPEG is 422 IMAGE_DECODE_FAILED', async (t) => {
    const truncated = photo('street_notice_sign.jpg').subarray(0, 2000);
    isError(t, await predict(app, 'mobilenetv2', truncated), 422, 'IMAGE_DECODE_FAILED');
    isError(t, await predict(app, 'yolox-nano', truncated), 422, 'IMAGE_DECODE_FAILED');
  });

  t.test('an empty body is 400', async (t) => {
    const res = await predict(app, 'mobilenetv2', Buffer.alloc(0));
    t.equal(res.statusCode, 400, res.body);
    t.same(Object.keys(res.json<Record<string, unknown>>()).sort(), ['code', 'message']);
  });

  t.test('an unknown model is 404 MODEL_NOT_FOUND', async (t) => {
    isError(t, await predict(app, 'nope', photo('cat_chelsea.png')), 404, 'MODEL_NOT_FOUND');
  });

  t.test("MODEL_NOT_FOUND names the served models and the closest one", async (t) => {
    const served = (await app.inject({ url: '/v1/models' })).json<{ models: { name: string }[] }>().models.map((m) => m.name).sort();
    const listed = served.map((n) => `"${n}"`);
    const list = `${listed.slice(0, -1).join(', ')} and ${listed.at(-1) ?? ''}`;
    const upper = await predict(app, 'OCR', photo('text_no_parking.jpg'));
    t.equal(upper.json<ErrorBody>().message, `no model named "OCR" is served (served: ${list}); did you mean "ocr"?`);
    const typo = await app.inject({ url: '/v1/models/mobilenet-v2' });
    t.match(typo.json<ErrorBody>().message, /did you mean "mobilenetv2"\?$/, 'GET /v1/models/{name} too');
    const far = await predict(app, 'resnet50', photo('cat_chelsea.png'));
    t.equal(far.json<ErrorBody>().message, `no model named "resnet50" is served (served: ${list})`, 'no suggestion when none is close');
  });

  t.test('a photo is accepted whatever its Content-Type says, or without one', async (t) => {
    const cat = photo('cat_chelsea.png');
    for (const type of ['application/x-www-form-urlencoded', 'text/plain', 'image/png; charset=x', 'application/json', 'image/jpeg']) {
      const res = await predict(app, 'mobilenetv2', cat, { type });
      t.equal(res.statusCode, 200, `${type}: 200 (${res.body.slice(0, 120)})`);
    }
    const bare = await app.inject({ method: 'POST', url: '/v1/models/mobilenetv2/predict', payload: cat });
    t.equal(bare.statusCode, 200, `no Content-Type: 200 (${bare.body.slice(0, 120)})`);
  });

  t.test("a body that is no image: the accepted formats, what was received, and that URLs are not fetched", async (t) => {
    const ask = async (body: string) => (await predict(app, 'mobilenetv2', Buffer.from(body), { type: 'text/plain' })).json<ErrorBody>().message;
    const tail = 'Send the image file itself as the body (curl --data-binary @photo.jpg); URLs are not fetched';
    t.equal(
      await ask('https://example.com/cat.jpg'),
      `the body is not an image in an accepted format (jpeg, png, webp): it is a URL, "https://example.com/cat.jpg". ${tail}`,
    );
    t.match(await ask('{"url": "x"}'), /: it is JSON, "\{\\"url\\": \\"x\\"\}"\. Send/);
    t.match(await ask('<svg/>'), /: it is markup \(HTML, XML or SVG\), "<svg\/>"\. Send/);
    const binary = await predict(app, 'mobilenetv2', Buffer.from([0, 1, 2, 0xfe, 5, 6, 7, 8, 9]));
    t.match(binary.json<ErrorBody>().message, /: it is 9 bytes beginning 00 01 02 fe 05 06 07 08\. Send/);
  });

  t.test('a wrong method on a route is 405 with Allow', async (t) => {
    const get = await app.inject({ method: 'GET', url: '/v1/models/mobilenetv2/predict' });
    isError(t, get, 405, 'METHOD_NOT_ALLOWED');
    t.equal(get.headers['allow'], 'POST');
    t.equal(get.json<ErrorBody>().message, 'GET is not allowed on /v1/models/mobilenetv2/predict: use POST');
    const del = await app.inject({ method: 'DELETE', url: '/v1/models' });
    t.equal(del.statusCode, 405);
    t.equal(del.headers['allow'], 'GET, HEAD');
  });

  t.test('an unknown route is 404 NOT_FOUND with the same error body', async (t) => {
    // Not under /v2: unknown /v2 paths answer in the Open Inference Protocol's error format (test/v2).
    isError(t, await app.inject({ method: 'GET', url: '/v9/whatever' }), 404, 'NOT_FOUND');
  });
});

t.test('request limits', sharedTestOptions(MOBILENET, 'images/street_notice_sign.jpg'), async (t) => {
  const { app } = await buildTestApp(t, {
    manifestPath: mobilenetOnlyManifest(t.testdir()),
    config: { maxFiles: 2, bodyLimitBytes: 50_000, maxInputPixels: 10_000 },
  });
  // Small images well inside every limit, and ones over exactly one limit each.
  const tiny = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#c08040' } }).png().toBuffer();
  const manyPixels = await sharp({ create: { width: 200, height: 200, channels: 3, background: '#c08040' } }).png().toBuffer();
  const bigFile = photo('street_notice_sign.jpg');
  t.ok(tiny.length < 50_000 && 64 * 64 < 10_000, 'the tiny image is within the limits');
  t.ok(manyPixels.length < 50_000, 'the 200x200 image is small in bytes, large in pixels');
  t.ok(bigFile.length > 50_000, 'the photo is over the body limit');

  t.test('images within the limits answer', async (t) => {
    t.equal((await predict(app, 'mobilenetv2', tiny, { type: 'image/png' })).statusCode, 200, 'one tiny image');
    const two = await predictMultipart(app, 'mobilenetv2', [
      { name: 'a.png', data: tiny, type: 'image/png' },
      { name: 'b.png', data: tiny, type: 'image/png' },
    ]);
    t.equal(two.statusCode, 200, 'maxFiles files');
    t.equal(two.json<MultipartAnswer>().results.length, 2);
  });

  t.test('more files than maxFiles is 413 TOO_MANY_FILES', async (t) => {
    const three = Array.from({ length: 3 }, (_, i) => ({ name: `${i}.png`, data: tiny, type: 'image/png' }));
    isError(t, await predictMultipart(app, 'mobilenetv2', three), 413, 'TOO_MANY_FILES');
  });

  t.test('a body over bodyLimitBytes is 413 BODY_TOO_LARGE', async (t) => {
    const raw = await predict(app, 'mobilenetv2', bigFile);
    isError(t, raw, 413, 'BODY_TOO_LARGE');
    t.equal(
      raw.json<ErrorBody>().message,
      `the request body (${Number((bigFile.length / 1024).toFixed(1))} KiB) is larger than the limit of 50000 bytes (48.8 KiB), set by OCULAR_BODY_LIMIT_BYTES`,
      'the message names the limit and its option',
    );
    const res = await predictMultipart(app, 'mobilenetv2', [{ name: 'big.jpg', data: bigFile, type: 'image/jpeg' }]);
    t.equal(res.statusCode, 413, 'a multipart file over the limit too');
    t.equal(res.json<ErrorBody>().code, 'BODY_TOO_LARGE');
  });

  t.test('an image over maxInputPixels is 422 TOO_MANY_PIXELS', async (t) => {
    isError(t, await predict(app, 'mobilenetv2', manyPixels, { type: 'image/png' }), 422, 'TOO_MANY_PIXELS');
  });
});
