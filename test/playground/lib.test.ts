/**
 * The playground's pure helpers (public/lib.js), run in Node: the COCO RLE decoder against the server's own
 * encoder, label placement (never overlapping, never off the canvas, however crowded), the compact JSON and the
 * Server-Timing parser.
 */
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { encodeRleCounts } from '../../src/tasks/segmentation/rle.js';
import { projectRoot } from '../helpers/shared.js';

interface Rect {
  x: number;
  y: number;
  w: number;
  h: number;
}
interface Lib {
  parseServerTiming(header: string | null): [string, number][];
  compactJson(value: unknown): string;
  decodeRleCounts(s: string): number[] | undefined;
  overlaps(a: Rect, b: Rect): boolean;
  placeLabels(
    wanted: { rect: Rect; text: string }[],
    measure: (text: string) => number,
    font: number,
    width: number,
    height: number,
  ): { index: number; text: string; rect: Rect | undefined }[];
}

// A browser module with no types of its own: imported by URL, typed here.
const lib = (await import(pathToFileURL(join(projectRoot, 'public', 'lib.js')).href)) as Lib;

/** A deterministic generator, so that a failure names a reproducible case. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

t.test("the RLE decoder reads back the server's encoder, runs of any length included", async (t) => {
  const next = random(7);
  const cases: number[][] = [[0], [5, 3], [0, 1, 2, 3], [100000, 1, 31, 32, 33, 1023, 1024, 1025], [3, 7, 2, 9, 0, 12, 4]];
  for (let i = 0; i < 200; i++) cases.push(Array.from({ length: 1 + Math.floor(next() * 30) }, () => Math.floor(next() ** 3 * 70000)));
  for (const counts of cases) {
    const decoded = lib.decodeRleCounts(encodeRleCounts(counts));
    if (JSON.stringify(decoded) !== JSON.stringify(counts)) return t.same(decoded, counts, `counts ${JSON.stringify(counts).slice(0, 80)}`);
  }
  t.pass(`${cases.length} run lists read back`);
  t.equal(lib.decodeRleCounts('\u0001'), undefined, 'a character outside the alphabet is refused');
  t.equal(lib.decodeRleCounts('o'), undefined, 'a string cut inside a number is refused');
});

t.test('labels never overlap and never leave the canvas, however crowded the boxes', async (t) => {
  const measure = (text: string): number => text.length * 7.5;
  for (const [seed, n, width, height] of [
    [1, 10, 1280, 960],
    [2, 40, 390, 292],
    [3, 80, 390, 292],
    [4, 200, 640, 480],
  ] as const) {
    const next = random(seed);
    const wanted = Array.from({ length: n }, (_, i) => {
      const x = next() * width * 0.9;
      const y = next() * height * 0.9;
      return { rect: { x, y, w: 5 + next() * (width - x) * 0.5, h: 5 + next() * (height - y) * 0.5 }, text: `label ${i} ${'x'.repeat(Math.floor(next() * 40))}` };
    });
    const placed = lib.placeLabels(wanted, measure, 13, width, height);
    const shown = placed.flatMap((p) => (p.rect === undefined ? [] : [p.rect]));
    const overlapping = shown.flatMap((a, i) => shown.slice(i + 1).filter((b) => lib.overlaps(a, b)).map(() => i));
    const off = shown.filter((r) => r.x < 0 || r.y < 0 || r.x + r.w > width || r.y + r.h > height);
    t.same({ overlapping, off }, { overlapping: [], off: [] }, `${n} boxes on ${width}×${height}: ${shown.length} labels placed, none overlapping or off the canvas`);
    t.equal(placed.length, n, 'one answer per box, placed or left off');
  }
  const [only] = lib.placeLabels([{ rect: { x: 100, y: 100, w: 50, h: 50 }, text: 'cat' }], measure, 13, 400, 300);
  t.same(only?.rect, { x: 100, y: 81, w: Math.ceil(3 * 7.5) + 8, h: 19 }, 'a lone label sits just above its box');
  const [top] = lib.placeLabels([{ rect: { x: 0, y: 0, w: 400, h: 300 }, text: 'cat' }], measure, 13, 400, 300);
  t.same(top?.rect?.y, 0, 'a box at the top edge gets its label inside');
  const [long] = lib.placeLabels([{ rect: { x: 0, y: 50, w: 50, h: 50 }, text: 'a'.repeat(200) }], measure, 13, 390, 300);
  t.ok((long?.rect?.w ?? Infinity) <= 390 * 0.6, 'a long label is cut to fit');
  t.match(long?.text, /…$/, 'with an ellipsis');
});

t.test('compact JSON keeps a point, a box and a prediction on one line', async (t) => {
  const body = {
    model: 'ocr',
    lines: [{ text: 'NO PARKING', score: 0.9412345678, polygon: [[101.123456, 202.654321], [303.5, 204.25], [302.75, 250.5], [100.125, 248.875]], box: { x1: 100.125, y1: 202.654321, x2: 303.5, y2: 250.5 } }],
  };
  const text = lib.compactJson(body);
  t.same(JSON.parse(text), body, 'the same JSON');
  t.notMatch(text, /\[\n\s*-?\d/, 'no coordinate alone on its line');
  t.match(text, /"box": \{"x1":100\.125,"y1":202\.654321,"x2":303\.5,"y2":250\.5\}/, 'a box on one line');
  t.equal(text.split('\n').length, 16, 'one line per field, per point and per bracket, and no more');
});

t.test('Server-Timing is read into stages and milliseconds', async (t) => {
  t.same(lib.parseServerTiming('preprocess;dur=1.20, queue;dur=0.05,inference;desc="x";dur=3'), [
    ['preprocess', 1.2],
    ['queue', 0.05],
    ['inference', 3],
  ]);
  t.same(lib.parseServerTiming(null), []);
  t.ok(Number.isNaN(lib.parseServerTiming('total')[0]?.[1]), 'a stage without a duration has NaN');
});
