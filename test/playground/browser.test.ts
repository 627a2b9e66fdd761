/**
 * The playground in a real browser: Debian's chromium driven by playwright-core against a real Ocular listening on
 * port 0 with the shared models. Any request to another origin, any Content-Security-Policy violation and any
 * uncaught page error fails the test; axe-core must report no serious or critical violation. Screenshots are kept
 * in artifacts/playground/ (CI keeps them as artifacts).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import t, { type Test } from 'tap';
import { PLAYGROUND_CSP } from '../../src/routes/playground.js';
import { buildTestApp } from '../helpers/app.js';
import { writeSubsetManifest } from '../helpers/manifest-subset.js';
import { haveShared, imagePath, projectRoot, sharedTestOptions } from '../helpers/shared.js';
import { findExecutable, requireExecutable, toolTestOptions } from '../helpers/tools.js';

const CHROMIUM = findExecutable('chromium', '/usr/bin/chromium');
const ARTIFACTS = join(projectRoot, 'artifacts', 'playground');
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#00a3a3', '#f032e6', '#808000', '#9a6324', '#000075'];
const API_KEY = 'playground-test-key-0123456789';
const MODELS = ['mobilenetv2', 'yolox-nano', 'ultraface', 'ocr'];

const SHARED = [
  'models/mobilenetv2-12-int8/model.onnx',
  'models/yolox-nano/model.onnx',
  'models/ultraface-rfb-320/model.onnx',
  'models/ppocrv4-det/model.onnx',
  'models/ppocrv4-rec/model.onnx',
  'images/cat_chelsea.png',
  'images/street_notice_sign.jpg',
  'images/text_no_parking.jpg',
];

function testOptions(): { skip?: string; timeout: number } {
  const skip = toolTestOptions(CHROMIUM, 'chromium').skip ?? sharedTestOptions(...SHARED).skip;
  return { timeout: 110_000, ...(skip !== undefined ? { skip } : {}) };
}

/**
 * The page's globals, as the page-side callbacks below use them. Those callbacks are serialised and run in the
 * browser; this project's tsconfig has no DOM lib, so they reach the globals through `globalThis as unknown as Page`.
 */
interface InPage {
  document: {
    getElementById(id: string): {
      textContent: string | null;
      disabled?: boolean;
      getContext?(kind: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: ArrayLike<number> } } | null;
    } | null;
    querySelectorAll(selector: string): { length: number };
  };
  sessionStorage: { getItem(key: string): string | null };
  axe: { run(): Promise<{ violations: { id: string; impact: string | null; help: string; nodes: unknown[] }[] }> };
  DataTransfer: new () => { items: { add(file: unknown): void } };
  File: new (parts: unknown[], name: string, options: { type: string }) => unknown;
}

interface Watch {
  origin: string;
  foreign: string[];
  cspViolations: string[];
  pageErrors: string[];
  apiRequests: { url: string; authorization: string | undefined }[];
}

/** A fresh headless Chromium (its own empty profile), watching every request the page makes. */
async function openBrowser(t: Test, origin: string): Promise<{ context: BrowserContext; page: Page; watch: Watch }> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'ocular-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM as string,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
    viewport: { width: 1280, height: 900 },
  });
  t.teardown(async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  });
  const watch: Watch = { origin, foreign: [], cspViolations: [], pageErrors: [], apiRequests: [] };
  // Nothing may leave the page's origin: such a request is recorded (the test fails) and never sent.
  await context.route(
    (url) => url.origin !== origin,
    async (route) => {
      watch.foreign.push(route.request().url());
      await route.abort();
    },
  );
  context.on('request', (req) => {
    const url = new URL(req.url());
    if (url.protocol === 'blob:' || url.protocol === 'data:') return;
    if (url.origin !== origin) watch.foreign.push(req.url());
    else if (url.pathname.startsWith('/v1/')) watch.apiRequests.push({ url: url.pathname, authorization: req.headers()['authorization'] });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => {
    if (/Content Security Policy|Refused to (load|execute|apply|connect|frame)/i.test(msg.text())) watch.cspViolations.push(msg.text());
  });
  page.on('pageerror', (err) => watch.pageErrors.push(err.message));
  return { context, page, watch };
}

async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return `http://127.0.0.1:${address.port}`;
}

/** Waits until the page has finished with `file` (an answer or an error is shown, the button is enabled again). */
async function settled(page: Page, fileName: string): Promise<string> {
  await page.waitForFunction(
    (name) => {
      const { document } = globalThis as unknown as InPage;
      const status = document.getElementById('status')?.textContent ?? '';
      const button = document.getElementById('run');
      return status.startsWith(`${name}: `) && button?.disabled === false;
    },
    fileName,
    { timeout: 30_000 },
  );
  return (await page.textContent('#status')) ?? '';
}

async function runModel(page: Page, model: string, file: string): Promise<string> {
  await page.selectOption('#model', model);
  // Selecting a model re-runs the previous file: let that finish, so that the next status is this file's.
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.getElementById('run')?.disabled === false);
  await page.setInputFiles('#file', file);
  return settled(page, basename(file));
}

/** axe-core, run inside the page (evaluated through DevTools, so the page's CSP, which is kept on, allows it). */
async function axeViolations(page: Page): Promise<{ id: string; impact: string; help: string; nodes: number }[]> {
  await page.evaluate(AXE_SOURCE);
  return page.evaluate(async () => {
    const result = await (globalThis as unknown as InPage).axe.run();
    return result.violations.map((v) => ({ id: v.id, impact: v.impact ?? '', help: v.help, nodes: v.nodes.length }));
  });
}

function seriousOnly(violations: { impact: string }[]): unknown[] {
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

function checkWatch(t: Test, watch: Watch): void {
  t.same(watch.foreign, [], 'no request to any other origin');
  t.same(watch.cspViolations, [], 'no Content-Security-Policy violation');
  t.same(watch.pageErrors, [], 'no uncaught error in the page');
}

t.test('with auth on, the playground asks for a key, then classifies, detects, reads text and reports a bad file', testOptions(), async (t) => {
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

  t.test('a cat photo on the classifier shows a cat label', async (t) => {
    const status = await runModel(page, 'mobilenetv2', imagePath('cat_chelsea.png'));
    t.match(status, /cat/i);
    const items = await page.$$eval('#items li', (lis) => lis.map((li) => li.textContent ?? ''));
    t.ok(items.length >= 1 && /cat/i.test(items[0] ?? ''), `the top label is a cat: ${items[0]}`);
    t.ok(Number(await page.getAttribute('#canvas', 'data-shapes')) >= 1, 'labels are drawn over the image');
    const body = JSON.parse((await page.textContent('#json')) ?? '{}') as { model?: string; predictions?: unknown[] };
    t.equal(body.model, 'mobilenetv2', 'the raw JSON is shown');
    const stages = await page.$$eval('#timings tbody th', (ths) => ths.map((th) => th.textContent));
    t.same(stages, ['preprocess', 'queue', 'inference', 'postprocess', 'total', 'round trip (browser)'], 'stage timings from Server-Timing');
    const ms = await page.$$eval('#timings tbody td', (tds) => tds.map((td) => Number(td.textContent)));
    t.ok(ms.every((v) => Number.isFinite(v) && v >= 0), `timings are numbers: ${ms.join(', ')}`);
    await screenshot(page, 'classification');
  });

  t.test('a street photo on the detector shows boxes drawn over it', async (t) => {
    const status = await runModel(page, 'yolox-nano', imagePath('street_notice_sign.jpg'));
    t.match(status, /\d+ detections?/);
    const body = JSON.parse((await page.textContent('#json')) ?? '{}') as {
      detections: { label: string; index: number; box: { x1: number; y1: number; x2: number; y2: number } }[];
    };
    t.ok(body.detections.length >= 1, `${body.detections.length} detections`);
    t.equal(Number(await page.getAttribute('#canvas', 'data-shapes')), body.detections.length, 'one box per detection');
    // The canvas is in the answer's pixel space: the left edge of the first box, half-way down, is stroked in a
    // palette colour (the stroke is at least 2 px wide, so that pixel is fully covered, with no anti-aliasing).
    const d = body.detections[0];
    if (d !== undefined) {
      const x = Math.floor(Math.max(0, d.box.x1));
      const y = Math.floor((d.box.y1 + d.box.y2) / 2);
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
    t.same(seriousOnly(await axeViolations(page)), [], 'axe: no serious or critical violation with an answer shown');
    await screenshot(page, 'detection');
  });

  t.test('a sign on the OCR model shows its text and polygons', async (t) => {
    const status = await runModel(page, 'ocr', imagePath('text_no_parking.jpg'));
    t.match(status, /\d+ lines? of text/);
    const items = await page.$$eval('#items li', (lis) => lis.map((li) => li.textContent ?? ''));
    t.ok(items.some((i) => /PARKING/i.test(i)), `the text is listed: ${items.join(' | ')}`);
    t.ok(Number(await page.getAttribute('#canvas', 'data-shapes')) >= 1, 'polygons are drawn');
    await screenshot(page, 'ocr');
  });

  t.test('a file that is not an image shows the error message', async (t) => {
    const notes = join(dir, 'notes.txt');
    writeFileSync(notes, 'not an image, just some notes\n');
    const status = await runModel(page, 'mobilenetv2', notes);
    t.match(status, /refused/);
    t.ok(await page.isVisible('#error'), 'the error is shown');
    t.match(await page.textContent('#error'), /415 UNSUPPORTED_MEDIA_TYPE: .*image/, 'with the code and the message');
    t.notOk(await page.isVisible('#result'), 'no stale answer is left on the page');
    t.same(seriousOnly(await axeViolations(page)), [], 'axe: no serious or critical violation with an error shown');
    await screenshot(page, 'error');
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

t.test('without auth, an image dropped on the page is classified and no key is sent', testOptions(), async (t) => {
  if (!requireExecutable(t, CHROMIUM, 'chromium') || !haveShared(t, ...SHARED)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ocular-playground-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { app } = await buildTestApp(t, { manifestPath: writeSubsetManifest(dir, ['mobilenetv2']) });
  const origin = await listen(app);
  const { page, watch } = await openBrowser(t, origin);
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.querySelectorAll('#model option').length === 1);

  const png = readFileSync(imagePath('cat_chelsea.png')).toString('base64');
  const dataTransfer = await page.evaluateHandle(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const { DataTransfer, File } = globalThis as unknown as InPage;
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
