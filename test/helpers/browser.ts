/**
 * The playground's browser tests' tools: Debian's chromium driven by playwright-core (a fresh profile per test,
 * every request watched, nothing allowed off the page's origin), axe-core run in the page, screenshots kept in
 * artifacts/playground/ (CI uploads that folder), and waits on the page's own state.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { Test } from 'tap';
import { findExecutable } from './tools.js';
import { projectRoot } from './shared.js';

export const CHROMIUM = findExecutable('chromium', '/usr/bin/chromium');
export const ARTIFACTS = join(projectRoot, 'artifacts', 'playground');
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
export const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#00a3a3', '#f032e6', '#808000', '#9a6324', '#000075'];
export const DESKTOP = { width: 1280, height: 900 };
export const PHONE = { width: 390, height: 844 };

/**
 * The page's globals, as the page-side callbacks use them. Those callbacks are serialised and run in the browser;
 * this project's tsconfig has no DOM lib, so they reach the globals through `globalThis as unknown as InPage`.
 */
export interface InPage {
  document: {
    getElementById(id: string): {
      textContent: string | null;
      disabled?: boolean;
      hidden?: boolean;
      dataset: Record<string, string | undefined>;
      getContext?(kind: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: ArrayLike<number> } } | null;
    } | null;
    querySelectorAll(selector: string): { length: number };
    activeElement: { id: string; tagName: string; dataset: Record<string, string | undefined> } | null;
    documentElement: { scrollWidth: number; clientWidth: number };
  };
  sessionStorage: { getItem(key: string): string | null };
  navigator: { clipboard: { readText(): Promise<string> } };
  axe: { run(): Promise<{ violations: { id: string; impact: string | null; help: string; nodes: unknown[] }[] }> };
  DataTransfer: new () => { items: { add(file: unknown): void } };
  File: new (parts: unknown[], name: string, options: { type: string }) => unknown;
}

export interface Watch {
  origin: string;
  foreign: string[];
  cspViolations: string[];
  pageErrors: string[];
  /** /v1 calls, with the Authorization header they carried. */
  apiRequests: { url: string; authorization: string | undefined }[];
  /** Every same-origin request's path and query, in order. */
  paths: string[];
}

/** A fresh headless Chromium (its own empty profile), watching every request the page makes. */
export async function openBrowser(t: Test, origin: string, viewport = DESKTOP): Promise<{ context: BrowserContext; page: Page; watch: Watch }> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'ocular-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM as string,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport,
  });
  t.teardown(async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  });
  const watch: Watch = { origin, foreign: [], cspViolations: [], pageErrors: [], apiRequests: [], paths: [] };
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
    if (url.origin !== origin) {
      watch.foreign.push(req.url());
      return;
    }
    watch.paths.push(url.pathname + url.search);
    if (url.pathname.startsWith('/v1/')) watch.apiRequests.push({ url: url.pathname, authorization: req.headers()['authorization'] });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => {
    if (/Content Security Policy|Refused to (load|execute|apply|connect|frame)/i.test(msg.text())) watch.cspViolations.push(msg.text());
  });
  page.on('pageerror', (err) => watch.pageErrors.push(err.message));
  return { context, page, watch };
}

export async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return `http://127.0.0.1:${address.port}`;
}

/** Waits until the page has finished with `file` (an answer or an error is shown, no request in flight). */
export async function settled(page: Page, fileName: string): Promise<string> {
  await page.waitForFunction(
    (name) => {
      const { document } = globalThis as unknown as InPage;
      const status = document.getElementById('status')?.textContent ?? '';
      return status.startsWith(`${name}: `) && document.getElementById('progress')?.hidden === true;
    },
    fileName,
    { timeout: 30_000 },
  );
  return (await page.textContent('#status')) ?? '';
}

/** Waits for the run that starts after `action` and returns its status line (the status is cleared first). */
export async function rerun(page: Page, fileName: string, action: () => Promise<unknown>): Promise<string> {
  await page.evaluate(() => {
    const status = (globalThis as unknown as InPage).document.getElementById('status');
    if (status !== null) status.textContent = '';
  });
  await action();
  return settled(page, fileName);
}

/** axe-core, run inside the page (evaluated through DevTools, so the page's CSP, which is kept on, allows it). */
export async function axeSerious(page: Page): Promise<{ id: string; impact: string; help: string; nodes: number }[]> {
  await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const result = await (globalThis as unknown as InPage).axe.run();
    return result.violations.map((v) => ({ id: v.id, impact: v.impact ?? '', help: v.help, nodes: v.nodes.length }));
  });
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

export function checkWatch(t: Test, watch: Watch): void {
  t.same(watch.foreign, [], 'no request to any other origin');
  t.same(watch.cspViolations, [], 'no Content-Security-Policy violation');
  t.same(watch.pageErrors, [], 'no uncaught error in the page');
}

export interface LabelRect {
  x: number;
  y: number;
  w: number;
  h: number;
  text: string;
}

/** The labels the page drew on the canvas (CSS pixels), and the canvas's CSS size. */
export async function drawnLabels(page: Page): Promise<{ labels: LabelRect[]; width: number; height: number }> {
  const labels = JSON.parse((await page.getAttribute('#canvas', 'data-labels')) ?? '[]') as LabelRect[];
  const box = await page.$eval('#canvas', (c) => {
    const r = (c as unknown as { getBoundingClientRect(): { width: number; height: number } }).getBoundingClientRect();
    return { width: r.width, height: r.height };
  });
  return { labels, ...box };
}

/** Pairs of drawn labels that intersect, and labels not wholly on the canvas. */
export function labelProblems(drawn: { labels: LabelRect[]; width: number; height: number }): { overlapping: string[]; clipped: string[] } {
  const overlapping: string[] = [];
  const { labels } = drawn;
  for (let i = 0; i < labels.length; i++) {
    for (let j = i + 1; j < labels.length; j++) {
      const a = labels[i] as LabelRect;
      const b = labels[j] as LabelRect;
      if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) overlapping.push(`${a.text} / ${b.text}`);
    }
  }
  const clipped = labels.filter((l) => l.x < 0 || l.y < 0 || l.x + l.w > drawn.width + 0.5 || l.y + l.h > drawn.height + 0.5).map((l) => l.text);
  return { overlapping, clipped };
}

/** True when the page scrolls sideways (wider than its viewport). */
export async function scrollsSideways(page: Page): Promise<boolean> {
  return page.evaluate(() => {
    const { documentElement } = (globalThis as unknown as InPage).document;
    return documentElement.scrollWidth > documentElement.clientWidth;
  });
}

/**
 * Waits until the canvas is redrawn for a viewport `width` px wide: its own style width (set only by its render,
 * together with the labels' places) fits, and its box is that width. CSS alone shrinks the box first, while the
 * labels still hold the wider drawing's places.
 */
export async function waitForRedrawAt(page: Page, width: number): Promise<void> {
  await page.waitForFunction((w) => {
    const c = (globalThis as unknown as InPage).document.getElementById('canvas') as unknown as { style: { width: string }; getBoundingClientRect(): { right: number; width: number } };
    const styled = parseFloat(c.style.width);
    const box = c.getBoundingClientRect();
    return styled <= w && box.right <= w && Math.abs(box.width - styled) < 1;
  }, width);
}
