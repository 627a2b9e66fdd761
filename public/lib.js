// The playground's pure helpers (no DOM): parsing what the API sends and placing labels. app.js imports them; the
// tests run them in Node (test/playground/lib.test.ts).

/**
 * `preprocess;dur=1.20, queue;dur=0.05, ...` -> [[name, ms], ...]
 * @param {string | null} header
 * @returns {[string, number][]}
 */
export function parseServerTiming(header) {
  if (header === null) return [];
  /** @type {[string, number][]} */
  const out = [];
  for (const entry of header.split(',')) {
    const [name, ...params] = entry.trim().split(';');
    if (name === undefined || name === '') continue;
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith('dur='));
    out.push([name, dur === undefined ? NaN : Number(dur.slice(4))]);
  }
  return out;
}

/**
 * JSON with small arrays and objects on one line (a box, a point, a prediction): at most one point per line.
 * @param {unknown} value
 * @param {string} indent
 * @returns {string}
 */
export function compactJson(value, indent = '') {
  const flat = JSON.stringify(value) ?? 'null';
  if (value === null || typeof value !== 'object' || flat.length + indent.length <= 76) return flat;
  const inner = `${indent}  `;
  if (Array.isArray(value)) return `[\n${value.map((v) => inner + compactJson(v, inner)).join(',\n')}\n${indent}]`;
  const entries = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${compactJson(v, inner)}`);
  return `{\n${entries.join(',\n')}\n${indent}}`;
}

/**
 * pycocotools' compressed RLE string -> run lengths (alternating background and mask, column-major), or
 * undefined when the string is malformed.
 * @param {string} s
 * @returns {number[] | undefined}
 */
export function decodeRleCounts(s) {
  /** @type {number[]} */
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = 1;
    while (more) {
      if (p >= s.length || k > 6) return undefined;
      const c = s.charCodeAt(p) - 48;
      if (c < 0 || c > 63) return undefined;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2] ?? 0;
    if (x < 0) return undefined;
    counts.push(x);
  }
  return counts;
}

/** @typedef {{ x: number, y: number, w: number, h: number }} Rect */

/**
 * @param {Rect} a
 * @param {Rect} b
 */
export function overlaps(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

/**
 * The text, cut with an ellipsis to at most 60% of the canvas's width.
 * @param {(text: string) => number} measure the text's width in CSS pixels
 * @param {string} text
 * @param {number} width
 */
export function fitText(measure, text, width) {
  const max = Math.max(40, width * 0.6) - 8;
  if (measure(text) <= max) return text;
  let cut = text;
  while (cut.length > 1 && measure(`${cut}…`) > max) cut = cut.slice(0, -1);
  return `${cut}…`;
}

/**
 * Where each label goes: above its box, else inside it at the top, below it, inside at the bottom, at the right
 * corners, then stacked down inside the box or up above it: the first place that is wholly on the canvas (never
 * clipped) and overlaps no label already placed. A label with no such place is shortened to its number in the
 * list; one with no room even then is left off the picture (the list has it). Labels are placed in the order
 * given (the answer's: most confident first). A label is `font + 6` pixels high and its text's width plus 8 wide.
 * @param {{ rect: Rect, text: string }[]} wanted boxes in CSS pixels
 * @param {(text: string) => number} measure
 * @param {number} font
 * @param {number} width
 * @param {number} height
 * @returns {{ index: number, text: string, rect: Rect | undefined }[]}
 */
export function placeLabels(wanted, measure, font, width, height) {
  /** @type {Rect[]} */
  const taken = [];
  const th = font + 6;
  return wanted.map(({ rect: box, text }, index) => {
    for (const label of [fitText(measure, text, width), String(index + 1)]) {
      const tw = Math.ceil(measure(label)) + 8;
      /** @type {[number, number][]} */
      const spots = [
        [box.x, box.y - th],
        [box.x, box.y],
        [box.x, box.y + box.h],
        [box.x, box.y + box.h - th],
        [box.x + box.w - tw, box.y - th],
        [box.x + box.w - tw, box.y],
      ];
      for (let k = 1; k * th < box.h - th; k++) spots.push([box.x, box.y + k * th]);
      for (let k = 2; k <= 6; k++) spots.push([box.x, box.y - k * th]);
      for (const [sx, sy] of spots) {
        const r = { x: Math.min(Math.max(0, Math.round(sx)), width - tw), y: Math.min(Math.max(0, Math.round(sy)), height - th), w: tw, h: th };
        if (r.x < 0 || r.y < 0) continue;
        if (taken.some((t) => overlaps(t, r))) continue;
        taken.push(r);
        return { index, text: label, rect: r };
      }
    }
    return { index, text, rect: undefined };
  });
}
