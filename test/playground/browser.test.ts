/**
 * The playground in a real browser: Debian's chromium driven by playwright-core against a real Ocular listening on
 * port 0 with the shared models. Any request to another origin, any Content-Security-Policy violation and any
 * uncaught page error fails the test; axe-core must report no serious or critical violation. Each task's answer is
 * photographed at 1280 and at 390 px wide in artifacts/playground/ (CI keeps them as artifacts). The controls,
 * cancel, loading and keyboard checks are in controls.test.ts.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Page } from 'playwright-core';
import t, { type Test } from 'tap';
import { PLAYGROUND_CSP } from '../../src/routes/playground.js';
import { buildTestApp } from '../helpers/app.js';
import {
  CHROMIUM,
  DESKTOP,
  PALETTE,
  PHONE,
  axeSerious,
  checkWatch,
  drawnLabels,
  type InPage,
  labelProblems,
  listen,
  openBrowser,
  screenshot,
  scrollsSideways,
  settled,
  waitForRedrawAt,
} from '../helpers/browser.js';
import { writeSubsetManifest } from '../helpers/manifest-subset.js';
import { haveShared, imagePath, sharedTestOptions } from '../helpers/shared.js';
import { requireExecutable, toolTestOptions } from '../helpers/tools.js';

const API_KEY = 'playground-test-key-0123456789';
/** One model per image task. */
const MODELS = ['mobilenetv2', 'yolox-nano', 'ocr', 'deeplabv3-seg'];

const SHARED = [
  'models/mobilenetv2-12-int8/model.onnx',
  'models/yolox-nano/model.onnx',
  'models/ppocrv4-det/model.onnx',
  'models/ppocrv4-rec/model.onnx',
  'models/deeplabv3-mobilenetv2-voc/model.onnx',
  'images/cat_chelsea.png',
  'images/street_notice_sign.jpg',
  'images/text_no_parking.jpg',
  'images/person_astronaut.png',
];

function testOptions(): { skip?: string; timeout: number } {
  const skip = toolTestOptions(CHROMIUM, 'chromium').skip ?? sharedTestOptions(...SHARED).skip;
  // Five models load first: most of the time on a loaded machine.
  return { timeout: 240_000, ...(skip !== undefined ? { skip } : {}) };
}

async function runModel(page: Page, model: string, file: string): Promise<string> {
  await page.selectOption('#model', model);
  // Selecting a model re-runs the previous file: let that finish, so that the next status is this file's.
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.getElementById('progress')?.hidden === true);
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.getElementById('run')?.disabled === false);
  await page.setInputFiles('#file', file);
  return settled(page, basename(file));
}

/** The overlay's opacity, as the slider sets it (an input event: the page redraws, no request). */
async function setOpacity(page: Page, value: string): Promise<void> {
  await page.$eval(
    '#opacity',
    (el, v) => {
      const input = el as unknown as { value: string; dispatchEvent(e: unknown): boolean };
      input.value = v;
      input.dispatchEvent(new (globalThis as unknown as { Event: new (type: string, init: { bubbles: boolean }) => unknown }).Event('input', { bubbles: true }));
    },
    value,
  );
}

/**
 * The answer at phone width: no sideways scrolling, the results below the image, labels neither overlapping nor
 * clipped; photographed at both widths.
 */
async function bothWidths(t: Test, page: Page, name: string): Promise<void> {
  await screenshot(page, `${name}-1280`);
  await page.setViewportSize(PHONE);
  // The page redraws when the space for the image changes (a ResizeObserver): wait for the narrower drawing.
  await waitForRedrawAt(page, PHONE.width);
  t.notOk(await scrollsSideways(page), `${name} at 390 px: no horizontal scroll`);
  const canvas = await page.$eval('#canvas', (c) => (c as unknown as { getBoundingClientRect(): { bottom: number; right: number } }).getBoundingClientRect());
  const list = await page.$eval('#items', (c) => (c as unknown as { getBoundingClientRect(): { top: number } }).getBoundingClientRect());
  t.ok(list.top >= canvas.bottom, `${name} at 390 px: the results are below the image`);
  t.ok(canvas.right <= PHONE.width, `${name} at 390 px: the image fits the width (${canvas.right} px)`);
  const problems = labelProblems(await drawnLabels(page));
  t.same(problems, { overlapping: [], clipped: [] }, `${name} at 390 px: labels neither overlap nor clip`);
  await screenshot(page, `${name}-390`);
  await page.setViewportSize(DESKTOP);
}

t.test('with auth on, the playground asks for a key, then classifies, detects, reads text, segments and reports a bad file', testOptions(), async (t) => {
  if (!requireExecutable(t, CHROMIUM, 'chromium') || !haveShared(t, ...SHARED)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ocular-playground-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keysFile = join(dir, 'keys');
  writeFileSync(keysFile, `# test key\n${API_KEY}\n`);
  const { app } = await buildTestApp(t, { manifestPath: writeSubsetManifest(dir, MODELS), config: { authKeysFile: keysFile } });
  const origin = await listen(app);
  const { page, watch } = await openBrowser(t, origin);

  const response = await page.goto(`${origin}/`);
  t.equal(response?.status(), 200, 'the page itself needs no key');
  t.equal(response?.headers()['content-security-policy'], PLAYGROUND_CSP, 'the page carries its strict CSP');

  await page.waitForSelector('#error:not([hidden])');
  t.match(await page.textContent('#error'), /401 UNAUTHORIZED/, 'without a key the model list is refused, and the page says so');
  t.ok(await page.isVisible('#api-key'), 'the key field appears once the server asked for a key');

  await page.fill('#api-key', API_KEY);
  await page.press('#api-key', 'Tab');
  await page.waitForFunction((n) => (globalThis as unknown as InPage).document.querySelectorAll('#model option').length === n, MODELS.length);
  t.same(
    await page.$$eval('#model option', (os) => os.map((o) => o.getAttribute('value'))),
    MODELS,
    'the models come from GET /v1/models once the key is given',
  );
  t.notOk(await page.isVisible('#error'), 'the error is cleared');
  t.equal(await page.evaluate(() => (globalThis as unknown as InPage).sessionStorage.getItem('ocular.apiKey')), API_KEY, 'the key is kept in sessionStorage');
  const version = JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
  await page.waitForSelector('#server-version:not([hidden])');
  t.equal(await page.textContent('#server-version'), `v${version.version}`, "the header shows the server's version (GET /v2)");

  t.test('a cat photo on the classifier shows a cat label', async (t) => {
    const status = await runModel(page, 'mobilenetv2', imagePath('cat_chelsea.png'));
    t.match(status, /cat/i);
    const items = await page.$$eval('#items li', (lis) => lis.map((li) => li.textContent ?? ''));
    t.ok(items.length >= 1 && /cat/i.test(items[0] ?? ''), `the top label is a cat: ${items[0]}`);
    t.ok(Number(await page.getAttribute('#canvas', 'data-shapes')) >= 1, 'labels are drawn over the image');
    t.notOk(await page.isVisible('#json'), 'the raw JSON is collapsed');
    await page.click('#raw summary');
    const json = (await page.textContent('#json')) ?? '{}';
    const body = JSON.parse(json) as { model?: string; predictions?: unknown[] };
    t.equal(body.model, 'mobilenetv2', 'the raw JSON is shown when opened');
    t.ok(json.split('\n').length <= 3 + (body.predictions?.length ?? 0) + 6, 'compact: one prediction per line');
    await page.click('#raw summary');
    const stages = await page.$$eval('#timings tbody th', (ths) => ths.map((th) => th.textContent));
    t.same(stages, ['preprocess', 'queue', 'inference', 'postprocess', 'total', 'round trip (browser)'], 'stage timings from Server-Timing');
    const ms = await page.$$eval('#timings tbody td.num', (tds) => tds.map((td) => Number(td.textContent)));
    t.ok(ms.every((v) => Number.isFinite(v) && v >= 0), `timings are numbers: ${ms.join(', ')}`);
    const bars = await page.$$eval('#timings .bar', (bs) => bs.map((b) => (b as unknown as { style: { width: string } }).style.width));
    t.equal(bars.length, stages.length, 'one bar per stage');
    t.ok(bars.some((w) => w === '100%'), `the longest stage fills its track: ${bars.join(', ')}`);
    await bothWidths(t, page, 'classification');
  });

  t.test('a street photo on the detector shows boxes drawn over it', async (t) => {
    const status = await runModel(page, 'yolox-nano', imagePath('street_notice_sign.jpg'));
    t.match(status, /\d+ detections?/);
    const body = JSON.parse((await page.textContent('#json')) ?? '{}') as {
      detections: { label: string; index: number; box: { x1: number; y1: number; x2: number; y2: number } }[];
    };
    t.ok(body.detections.length >= 1, `${body.detections.length} detections`);
    t.equal(Number(await page.getAttribute('#canvas', 'data-shapes')), body.detections.length, 'one box per detection');
    // The canvas shows the answer scaled (data-scale: canvas pixels per image pixel): the left edge of the first
    // box, half-way down, is stroked in a palette colour (the stroke is 2.5 px wide, so that pixel is fully covered).
    const scale = Number(await page.getAttribute('#canvas', 'data-scale'));
    const d = body.detections[0];
    if (d !== undefined) {
      const x = Math.floor(Math.max(0, d.box.x1 * scale));
      const y = Math.floor(((d.box.y1 + d.box.y2) / 2) * scale);
      const rgb = await page.evaluate(
        ([px, py]) => {
          const c = (globalThis as unknown as InPage).document.getElementById('canvas');
          const data = c?.getContext?.('2d')?.getImageData(px as number, py as number, 1, 1).data;
          return data === undefined ? '' : `#${[data[0], data[1], data[2]].map((v) => (v ?? 0).toString(16).padStart(2, '0')).join('')}`;
        },
        [x, y],
      );
      t.ok(PALETTE.includes(rgb), `the box edge at (${x}, ${y}) is drawn (${rgb})`);
    }
    t.equal((await page.$$('#items li')).length, body.detections.length, 'one list item per detection');
    t.same(await axeSerious(page), [], 'axe: no serious or critical violation with an answer shown');
    await bothWidths(t, page, 'detection');
  });

  t.test('a sign on the OCR model shows its text and polygons', async (t) => {
    const status = await runModel(page, 'ocr', imagePath('text_no_parking.jpg'));
    t.match(status, /\d+ lines? of text/);
    const items = await page.$$eval('#items li', (lis) => lis.map((li) => li.textContent ?? ''));
    t.ok(items.some((i) => /PARKING/i.test(i)), `the text is listed: ${items.join(' | ')}`);
    t.ok(Number(await page.getAttribute('#canvas', 'data-shapes')) >= 1, 'polygons are drawn');
    const json = (await page.textContent('#json')) ?? '';
    t.notMatch(json, /\[\n\s*\d/, 'compact JSON: no coordinate alone on its line');
    await bothWidths(t, page, 'ocr');
  });

  t.test('a photo of a person on the segmentation model shows a mask over the person and a legend', async (t) => {
    const status = await runModel(page, 'deeplabv3-seg', imagePath('person_astronaut.png'));
    t.match(status, /\d+ class(es)?/);
    const body = JSON.parse((await page.textContent('#json')) ?? '{}') as { classes: { label: string; index: number; box: { x1: number; y1: number; x2: number; y2: number } }[] };
    const person = body.classes.find((c) => c.label === 'person');
    t.ok(person !== undefined, `a person is found: ${body.classes.map((c) => c.label).join(', ')}`);
    const legend = await page.$$eval('#items li', (lis) => lis.map((li) => li.textContent ?? ''));
    t.equal(legend.length, body.classes.length, 'one legend entry per class');
    if (person !== undefined) {
      // The mask is decoded from its COCO RLE into a class map: pointing at the middle of the person's box finds
      // the person there, and at full opacity that pixel is the person's colour.
      await setOpacity(page, '1');
      const scale = Number(await page.getAttribute('#canvas', 'data-scale'));
      const slot = body.classes.indexOf(person);
      const x = ((person.box.x1 + person.box.x2) / 2) * scale;
      const y = ((person.box.y1 + person.box.y2) / 2) * scale;
      await page.hover('#canvas', { position: { x, y } });
      t.equal(await page.getAttribute('#canvas', 'data-highlight'), String(slot), 'pointing at the person highlights the person');
      t.ok(await page.$eval(`#items li[data-index="${slot}"]`, (li) => li.classList.contains('active')), "and the person's legend entry");
      const rgb = await page.evaluate(
        ([px, py]) => {
          const data = (globalThis as unknown as InPage).document.getElementById('canvas')?.getContext?.('2d')?.getImageData(px as number, py as number, 1, 1).data;
          return data === undefined ? '' : `#${[data[0], data[1], data[2]].map((v) => (v ?? 0).toString(16).padStart(2, '0')).join('')}`;
        },
        [Math.floor(x), Math.floor(y)],
      );
      t.equal(rgb, PALETTE[person.index % PALETTE.length], "the person's pixels are drawn in its colour");
    }
    await page.hover('#items li[data-index="0"]');
    t.equal(await page.getAttribute('#canvas', 'data-highlight'), '0', 'hovering a legend entry highlights its class');
    await page.mouse.move(0, 0);
    t.equal(await page.getAttribute('#canvas', 'data-highlight'), '-1', 'and leaving it shows every class again');
    await setOpacity(page, '0.5');
    await bothWidths(t, page, 'segmentation');
  });

  t.test('a file that is not an image shows the error message', async (t) => {
    const notes = join(dir, 'notes.txt');
    writeFileSync(notes, 'not an image, just some notes\n');
    const status = await runModel(page, 'mobilenetv2', notes);
    t.match(status, /refused/);
    t.ok(await page.isVisible('#error'), 'the error is shown');
    t.match(await page.textContent('#error'), /415 UNSUPPORTED_MEDIA_TYPE: .*image/, 'with the code and the message');
    t.notOk(await page.isVisible('#result'), 'no stale answer is left on the page');
    t.same(await axeSerious(page), [], 'axe: no serious or critical violation with an error shown');
    await screenshot(page, 'error-1280');
  });

  t.test('every API call carried the key as a bearer token, once it was given', async (t) => {
    const after = watch.apiRequests.slice(1);
    t.ok(after.length >= 5, `${after.length} API calls`);
    t.ok(
      after.every((r) => r.authorization === `Bearer ${API_KEY}`),
      'Authorization: Bearer <key> on every call after the first',
    );
    t.equal(watch.apiRequests[0]?.authorization, undefined, 'the first call, before the key, carried none');
  });

  t.test('nothing left the origin, broke the CSP or threw', async (t) => checkWatch(t, watch));
});

t.test('without auth, an image dropped on the page is classified, no key is sent and no key field is shown', testOptions(), async (t) => {
  if (!requireExecutable(t, CHROMIUM, 'chromium') || !haveShared(t, ...SHARED)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ocular-playground-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { app } = await buildTestApp(t, { manifestPath: writeSubsetManifest(dir, ['mobilenetv2']) });
  const origin = await listen(app);
  const { page, watch } = await openBrowser(t, origin);
  // The list as a server with a tensor-only model would answer it (loading one here would only cost time): the
  // picker leaves it out and names it in a note.
  await page.route(`${origin}/v1/models`, async (route) => {
    const res = await route.fetch();
    const body = (await res.json()) as { models: Record<string, unknown>[] };
    const first = body.models[0] ?? {};
    await route.fulfill({ response: res, json: { models: [...body.models, { ...first, name: 'deeplabv3', task: 'tensor' }] } });
  });
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.querySelectorAll('#model option').length === 1);
  t.notOk(await page.isVisible('#api-key'), 'no key field: the server asked for none');
  t.same(await page.$$eval('#model option', (os) => os.map((o) => o.getAttribute('value'))), ['mobilenetv2'], 'only the image model is offered');
  t.match(await page.textContent('#note'), /deeplabv3 \(tensor\)/, 'the tensor model is named in a note');
  t.equal(await page.textContent('#status'), '1 model ready to try. Choose or drop an image, or try the sample.', 'one model, in the singular');

  const png = readFileSync(imagePath('cat_chelsea.png')).toString('base64');
  const dataTransfer = await page.evaluateHandle(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const { DataTransfer, File } = (globalThis as unknown as InPage);
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'dropped-cat.png', { type: 'image/png' }));
    return dt;
  }, png);
  await page.dispatchEvent('main', 'drop', { dataTransfer });
  t.match(await settled(page, 'dropped-cat.png'), /cat/i, 'the dropped image is classified');
  t.ok(watch.apiRequests.length >= 2, 'models listed, then predict');
  t.ok(watch.apiRequests.every((r) => r.authorization === undefined), 'no Authorization header without a key');
  checkWatch(t, watch);
});
