/**
 * The playground's controls in a real browser (chromium through playwright-core, a real Ocular on port 0): the
 * "models are loading" state that turns ready, the built-in sample, each task parameter changing the request and
 * the drawing, labels that neither overlap nor clip on the busiest shared photo (at 1280 and 390 px), highlight
 * from the list to the picture and back, a slow request (held open by the test) with its progress and cancel, and
 * every control used from the keyboard alone. Screenshots of the slow request go to artifacts/playground/.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FileChooser, Page, Route } from 'playwright-core';
import t, { type Test } from 'tap';
import { buildTestApp } from '../helpers/app.js';
import {
  CHROMIUM,
  DESKTOP,
  PHONE,
  axeSerious,
  checkWatch,
  drawnLabels,
  type InPage,
  labelProblems,
  listen,
  openBrowser,
  rerun,
  screenshot,
  scrollsSideways,
  settled,
  type Watch,
  waitForRedrawAt,
} from '../helpers/browser.js';
import { writeSubsetManifest } from '../helpers/manifest-subset.js';
import { haveShared, imagePath, sharedTestOptions } from '../helpers/shared.js';
import { requireExecutable, toolTestOptions } from '../helpers/tools.js';

/** The shared photo with the most objects for yolox-nano (a street full of pedestrians). */
const BUSIEST = 'street_pedestrians_vtest_f300.jpg';
const SHARED = ['models/mobilenetv2-12-int8/model.onnx', 'models/yolox-nano/model.onnx', `images/${BUSIEST}`];
const PREDICT = /\/v1\/models\/[^/]+\/predict/;

function testOptions(): { skip?: string; timeout: number } {
  const skip = toolTestOptions(CHROMIUM, 'chromium').skip ?? sharedTestOptions(...SHARED).skip;
  return { timeout: 120_000, ...(skip !== undefined ? { skip } : {}) };
}

/** The query of the latest predict request the page sent. */
function lastQuery(watch: Watch): URLSearchParams {
  const last = [...watch.paths].reverse().find((p) => PREDICT.test(p)) ?? '';
  return new URLSearchParams(last.split('?')[1] ?? '');
}

interface Item {
  text: string;
  score: number;
}

async function listed(page: Page): Promise<Item[]> {
  return page.$$eval('#items li[data-index]', (lis) =>
    lis.map((li) => ({ text: li.querySelector('.text')?.textContent ?? '', score: Number((li.querySelector('.score')?.textContent ?? '').replace('%', '')) / 100 })),
  );
}

async function shapes(page: Page): Promise<number> {
  return Number(await page.getAttribute('#canvas', 'data-shapes'));
}

/** Sets a control's value as a person would leave it, firing input then change (a range input has no typing). */
async function setValue(page: Page, selector: string, value: string): Promise<void> {
  await page.$eval(
    selector,
    (el, v) => {
      const input = el as unknown as { value: string; dispatchEvent(e: unknown): boolean };
      const { Event } = globalThis as unknown as { Event: new (type: string, init: { bubbles: boolean }) => unknown };
      input.value = v;
      input.dispatchEvent(new Event('input', { bubbles: true }));
      input.dispatchEvent(new Event('change', { bubbles: true }));
    },
    value,
  );
}

/** Presses Tab until the element `matches` has the focus; fails after 40 presses. */
async function tabTo(page: Page, id: string, index?: string): Promise<void> {
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => {
      const a = (globalThis as unknown as InPage).document.activeElement;
      return { id: a?.id ?? '', index: a?.dataset['index'] };
    });
    if (index !== undefined ? focused.index === index : focused.id === id) return;
  }
  throw new Error(`Tab never reached #${id}${index !== undefined ? ` [data-index=${index}]` : ''}`);
}

/**
 * Space on the file input, reached with Tab, opens the file chooser. Once, in a full run on a loaded runner, no
 * chooser came within 30 s (and was not reproduced under load since), so a press without one is tried once more,
 * after Tab has found the input again, and the test says so with what had the focus.
 */
async function chooserFromKeyboard(t: Test, page: Page): Promise<FileChooser> {
  for (let attempt = 1; ; attempt++) {
    await tabTo(page, 'file');
    try {
      const [chooser] = await Promise.all([page.waitForEvent('filechooser', { timeout: 15_000 }), page.keyboard.press('Space')]);
      return chooser;
    } catch (error) {
      const focused = await page.evaluate(() => (globalThis as unknown as InPage).document.activeElement?.id ?? '');
      if (attempt === 2) throw error;
      t.comment(`no file chooser after Space with the focus on #${focused}: pressing it again`);
    }
  }
}

/** Labels drawn over the answer: none overlapping another, none cut by the canvas's edge. */
async function checkLabels(t: Test, page: Page, where: string): Promise<number> {
  const drawn = await drawnLabels(page);
  t.same(labelProblems(drawn), { overlapping: [], clipped: [] }, `${where}: ${drawn.labels.length} labels, none overlapping or clipped`);
  return drawn.labels.length;
}

/** Holds every predict request until released: a slow request on demand. */
async function holdPredicts(page: Page): Promise<{ held: Promise<Route>; release(): Promise<void> }> {
  let routed: (r: Route) => void = () => undefined;
  const held = new Promise<Route>((resolve) => (routed = resolve));
  const handler = (route: Route): void => routed(route);
  await page.route(PREDICT, handler);
  return {
    held,
    release: async () => {
      await page.unroute(PREDICT, handler);
      const route = await held;
      // The page may have cancelled it: then there is nothing to send on.
      await route.continue().catch(() => undefined);
    },
  };
}

t.test('the playground waits for models to load, then every control changes the request and the drawing', testOptions(), async (t) => {
  if (!requireExecutable(t, CHROMIUM, 'chromium') || !haveShared(t, ...SHARED)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ocular-playground-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { app } = await buildTestApp(t, { manifestPath: writeSubsetManifest(dir, ['mobilenetv2', 'yolox-nano']), load: false });
  const origin = await listen(app);
  const { context, page, watch } = await openBrowser(t, origin);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
  const failed: string[] = [];
  page.on('requestfailed', (req) => {
    if (PREDICT.test(req.url())) failed.push(req.failure()?.errorText ?? '');
  });

  await page.goto(`${origin}/`);

  await t.test('while the models load, the page says so, polls /readyz and enables Run when they are ready', async (t) => {
    await page.waitForFunction(() => /Models are loading/.test((globalThis as unknown as InPage).document.getElementById('status')?.textContent ?? ''));
    t.ok(await page.isDisabled('#run'), 'Run is off while the model loads');
    t.ok(await page.isDisabled('#sample'), 'and so is the sample');
    t.same(await axeSerious(page), [], 'axe: no serious or critical violation while loading');
    const loading = app.ocular.models.loadAll();
    await page.waitForFunction(() => (globalThis as unknown as InPage).document.getElementById('run')?.disabled === false, undefined, { timeout: 60_000 });
    await loading;
    t.match(await page.textContent('#status'), /^2 models ready to try/, 'the page turns ready');
    t.ok(watch.paths.includes('/readyz'), 'it polled /readyz');
  });

  await t.test('the sample answers in one click, and top_k changes the request and the drawing', async (t) => {
    t.match(await page.textContent('#sample'), /television/, 'the classifier offers its sample');
    t.match(await rerun(page, 'television.png', () => page.click('#sample')), /television/i, 'the sample is classified as a television');
    t.equal(lastQuery(watch).get('top_k'), null, 'top_k untouched: the model decides');
    const before = (await listed(page)).length;
    await rerun(page, 'television.png', () => setValue(page, '#top-k', '2'));
    t.equal(lastQuery(watch).get('top_k'), '2', 'top_k=2 is sent');
    t.equal((await listed(page)).length, 2, `two labels listed (${before} before)`);
    t.equal(await shapes(page), 2, 'two labels drawn');
  });

  let all: Item[] = [];
  await t.test('on the busiest photo, the detector draws labels that neither overlap nor clip, at 1280 and at 390 px', async (t) => {
    await page.selectOption('#model', 'yolox-nano');
    await settled(page, 'television.png');
    await rerun(page, BUSIEST, () => page.setInputFiles('#file', imagePath(BUSIEST)));
    all = await listed(page);
    t.ok(all.length >= 8, `${all.length} detections on ${BUSIEST}`);
    t.equal(await shapes(page), all.length, 'one box per detection');
    const wide = await checkLabels(t, page, '1280 px');
    t.ok(wide >= Math.min(all.length, 8), `most labels find room at 1280 px (${wide} of ${all.length})`);
    await page.setViewportSize(PHONE);
    await waitForRedrawAt(page, PHONE.width);
    await checkLabels(t, page, '390 px');
    t.notOk(await scrollsSideways(page), 'no horizontal scroll at 390 px');
    t.same(await axeSerious(page), [], 'axe: no serious or critical violation at 390 px');
    await screenshot(page, 'busiest-390');
    await page.setViewportSize(DESKTOP);
    await screenshot(page, 'busiest-1280');
  });

  await t.test('score_threshold, iou_threshold and the class filter change the request and the drawing', async (t) => {
    await rerun(page, BUSIEST, () => setValue(page, '#score-threshold', '0.8'));
    t.equal(lastQuery(watch).get('score_threshold'), '0.8', 'score_threshold=0.8 is sent');
    const confident = await listed(page);
    t.ok(confident.length < all.length, `fewer detections (${confident.length} of ${all.length})`);
    t.ok(confident.every((i) => i.score >= 0.795), 'each at least 80%');
    t.equal(await shapes(page), confident.length, 'the drawing follows');

    await rerun(page, BUSIEST, () => setValue(page, '#score-threshold', '0.3'));
    await rerun(page, BUSIEST, () => setValue(page, '#iou-threshold', '0.95'));
    t.equal(lastQuery(watch).get('iou_threshold'), '0.95', 'iou_threshold=0.95 is sent');
    const loose = await listed(page);
    await rerun(page, BUSIEST, () => setValue(page, '#iou-threshold', '0.05'));
    t.equal(lastQuery(watch).get('iou_threshold'), '0.05', 'iou_threshold=0.05 is sent');
    const strict = await listed(page);
    t.ok(strict.length < loose.length, `a stricter NMS keeps fewer overlapping boxes (${strict.length} < ${loose.length})`);
    t.equal(await shapes(page), strict.length, 'the drawing follows');
    await rerun(page, BUSIEST, () => setValue(page, '#iou-threshold', '0.45'));

    const other = all.find((i) => i.text !== 'person')?.text;
    await rerun(page, BUSIEST, async () => {
      await page.fill('#classes', 'person');
      await page.press('#classes', 'Tab');
    });
    t.equal(lastQuery(watch).get('classes'), 'person', 'classes=person is sent');
    const people = await listed(page);
    t.ok(people.length >= 1 && people.every((i) => i.text === 'person'), `only people listed (${people.length}; before, also ${other ?? 'none'})`);
    t.equal(await shapes(page), people.length, 'and drawn');
    await checkLabels(t, page, 'people only');
  });

  await t.test('a list item highlights its box, and the box its list item', async (t) => {
    await page.hover('#items li[data-index="1"]');
    t.equal(await page.getAttribute('#canvas', 'data-highlight'), '1', 'hovering item 2 highlights box 2');
    const body = JSON.parse((await page.textContent('#json')) ?? '{}') as { detections: { box: { x1: number; y1: number; x2: number; y2: number } }[] };
    const area = (b: { x1: number; y1: number; x2: number; y2: number }): number => (b.x2 - b.x1) * (b.y2 - b.y1);
    const smallest = body.detections.reduce((best, d, i) => (area(d.box) < area(body.detections[best]?.box ?? d.box) ? i : best), 0);
    const b = body.detections[smallest]?.box;
    if (b === undefined) return t.fail('no detection');
    const scale = Number(await page.getAttribute('#canvas', 'data-scale'));
    await page.hover('#canvas', { position: { x: ((b.x1 + b.x2) / 2) * scale, y: ((b.y1 + b.y2) / 2) * scale } });
    t.equal(await page.getAttribute('#canvas', 'data-highlight'), String(smallest), 'pointing at a box highlights it');
    t.ok(await page.$eval(`#items li[data-index="${smallest}"]`, (li) => li.classList.contains('active')), 'and its list item');
  });

  await t.test('a slow request shows its progress with the elapsed time, the old answer goes, and Cancel aborts it', async (t) => {
    const hold = await holdPredicts(page);
    await page.click('#run');
    await hold.held;
    await page.waitForSelector('#progress:not([hidden])');
    await page.waitForFunction(() => Number.parseFloat((globalThis as unknown as InPage).document.getElementById('elapsed')?.textContent ?? '0') >= 0.3);
    t.notOk(await page.isVisible('#result'), 'the previous answer is cleared when the run starts');
    t.ok(await page.isDisabled('#run'), 'Run is off while the request runs');
    await screenshot(page, 'slow-request-1280');
    await page.setViewportSize(PHONE);
    t.notOk(await scrollsSideways(page), 'no horizontal scroll at 390 px while running');
    await screenshot(page, 'slow-request-390');
    await page.setViewportSize(DESKTOP);
    const failedBefore = failed.length;
    await page.click('#cancel');
    t.match(await settled(page, BUSIEST), /cancelled/, 'the page says it was cancelled');
    await page.waitForFunction(() => true);
    t.same(failed.slice(failedBefore), ['net::ERR_ABORTED'], 'the request was aborted by the browser');
    t.notOk(await page.isVisible('#error'), 'a cancel is no error');
    t.notOk(await page.isDisabled('#run'), 'Run is on again');
    await hold.release();
  });

  await t.test('every control works from the keyboard alone', async (t) => {
    await page.goto(`${origin}/`);
    await page.waitForFunction(() => (globalThis as unknown as InPage).document.getElementById('run')?.disabled === false);
    t.equal(await page.inputValue('#model'), 'yolox-nano', 'the model chosen last is kept for the tab');

    await tabTo(page, 'model');
    await page.keyboard.press('ArrowUp');
    t.equal(await page.inputValue('#model'), 'mobilenetv2', 'the model picker changes with the arrow keys');

    const chooser = await chooserFromKeyboard(t, page);
    await rerun(page, BUSIEST, () => chooser.setFiles(imagePath(BUSIEST)));
    t.equal(await shapes(page) > 0, true, 'a file chosen from the keyboard is run');

    await tabTo(page, 'top-k');
    const k = await page.inputValue('#top-k');
    await rerun(page, BUSIEST, () => page.keyboard.press('ArrowDown'));
    t.equal(lastQuery(watch).get('top_k'), String(Number(k) - 1), `top_k steps down from ${k} with the arrow keys and runs again`);

    await tabTo(page, 'sample');
    t.match(await rerun(page, 'television.png', () => page.keyboard.press('Enter')), /television/i, 'Enter on the sample button runs it');

    await tabTo(page, 'model');
    await rerun(page, 'television.png', () => page.keyboard.press('ArrowDown'));
    t.equal(await page.inputValue('#model'), 'yolox-nano', 'back to the detector, which runs on the same image');

    for (const [id, param, key] of [
      ['score-threshold', 'score_threshold', 'ArrowLeft'],
      ['iou-threshold', 'iou_threshold', 'ArrowRight'],
    ] as const) {
      await tabTo(page, id);
      const before = await page.inputValue(`#${id}`);
      await rerun(page, 'television.png', () => page.keyboard.press(key));
      const after = await page.inputValue(`#${id}`);
      t.not(after, before, `${param} steps with ${key} (${before} -> ${after})`);
      t.equal(lastQuery(watch).get(param), after, `${param}=${after} is sent`);
    }
    await tabTo(page, 'classes');
    await page.keyboard.type('tv');
    await rerun(page, 'television.png', () => page.keyboard.press('Enter'));
    t.equal(lastQuery(watch).get('classes'), 'tv', 'the class filter is sent on Enter');
    t.same((await listed(page)).map((i) => i.text), ['tv'], 'and the television is found');

    await tabTo(page, '', '0');
    t.equal(await page.getAttribute('#canvas', 'data-highlight'), '0', 'a focused list item highlights its box');

    await tabTo(page, 'raw-summary');
    await page.keyboard.press('Enter');
    t.ok(await page.isVisible('#json'), 'Enter opens the raw JSON');
    await tabTo(page, 'copy');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => ((globalThis as unknown as InPage).document.getElementById('copy-status')?.textContent ?? '') !== '');
    const copied = await page.evaluate(() => (globalThis as unknown as InPage).navigator.clipboard.readText());
    t.equal((JSON.parse(copied) as { model?: string }).model, 'yolox-nano', 'Copy puts the answer on the clipboard');

    const hold = await holdPredicts(page);
    await tabTo(page, 'run');
    await page.keyboard.press('Enter');
    await hold.held;
    await tabTo(page, 'cancel');
    await page.keyboard.press('Enter');
    t.match(await settled(page, 'television.png'), /cancelled/, 'Cancel works from the keyboard');
    await hold.release();
  });

  await t.test('a run answered 503 MODEL_NOT_READY waits for the model, then runs again by itself', async (t) => {
    let answered = 0;
    // The first run meets a model that is (re)loading: the 503 a server gives then.
    const handler = async (route: Route): Promise<void> => {
      if (answered++ === 0) await route.fulfill({ status: 503, headers: { 'retry-after': '1' }, json: { code: 'MODEL_NOT_READY', message: 'the model is not ready' } });
      else await route.continue();
    };
    await page.route(PREDICT, handler);
    const polls = watch.paths.filter((p) => p === '/readyz').length;
    await page.click('#run');
    await page.waitForFunction(() => /detection/.test((globalThis as unknown as InPage).document.getElementById('status')?.textContent ?? ''), undefined, { timeout: 30_000 });
    await page.unroute(PREDICT, handler);
    t.equal(answered, 2, 'refused once, then sent again without a click');
    t.ok(watch.paths.filter((p) => p === '/readyz').length > polls, 'after polling /readyz');
    t.notOk(await page.isVisible('#error'), 'the error went with the successful run');
  });

  t.test('nothing left the origin, broke the CSP or threw', async (t) => checkWatch(t, watch));
});
