/**
 * Time per image of the semantic-segmentation task, by stage, and (optionally) the masks drawn over the photos.
 * The app is built in process from the fixture manifest's segmentation model and answered through app.inject
 * (no sockets), one request at a time, so each stage's time is its own: preprocess (decode, EXIF, resize), queue,
 * inference and postprocess (the mask at the image's size in the mask threads, RLE or PNG), as Server-Timing says.
 *
 *   npx tsx scripts/segmentation-timing.ts [--rounds 10] [--model deeplabv3-seg] [--overlays DIR]
 *
 * Prints a Markdown table: per photo and mode (nearest + RLE, nearest + PNG, bilinear + RLE) the median of each
 * stage over the rounds, after one warm-up request each. --overlays writes, for cat_chelsea.png and
 * street_notice_sign.jpg, the PNG class map (NAME.mask.png) and the photo with the classes in colour over it
 * (NAME.overlay.png, half opacity, PASCAL VOC palette, a legend of the classes present).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import sharp from 'sharp';
import { buildApp } from '../src/app.js';
import { parseConfig } from '../src/config/config.js';
import { loadManifest } from '../src/config/manifest.js';
import { configureSharp } from '../src/core/preprocess/sharp-config.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '10' },
    manifest: { type: 'string', default: 'test/fixtures/shared.manifest.json' },
    model: { type: 'string', default: 'deeplabv3-seg' },
    overlays: { type: 'string' },
  },
});

const shared = resolve(process.env['OCULAR_SHARED_DIR'] ?? '../shared');
const PHOTOS = ['cat_chelsea.png', 'person_astronaut.png', 'street_notice_sign.jpg', 'soccer_player.jpg'];
const OVERLAID = ['cat_chelsea.png', 'street_notice_sign.jpg'];

const loaded = await loadManifest(values.manifest);
const entry = loaded.manifest.models.find((m) => m.name === values.model);
if (entry?.task !== 'semantic-segmentation') throw new Error(`${values.model} is not a semantic-segmentation model of ${values.manifest}`);
const bilinear = { ...entry, name: `${entry.name}-bilinear`, options: { ...entry.options, upsample: 'bilinear' as const } };
const manifest = { ...loaded, manifest: { models: [entry, bilinear] } };
const { config } = parseConfig({}, []);
// The legend's entries, drawn from SVG before configureSharp allows only the server's image formats.
if (entry.labels === undefined || /^https?:\/\//.test(entry.labels)) throw new Error(`${entry.name}: this script reads a local labels file, and the entry names none`);
const labelNames = readFileSync(resolve(loaded.baseDir, entry.labels), 'utf8').split('\n').filter((l) => l !== '');
const legendEntries = await Promise.all(
  labelNames.map((label, index) => {
    const [r, g, b] = vocColour(index);
    const text = label.replace(/[<>&"]/g, '');
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="160" height="20"><rect x="2" y="2" width="16" height="16" fill="rgb(${r},${g},${b})" stroke="white"/><text x="24" y="15" font-family="sans-serif" font-size="14" fill="white" stroke="black" stroke-width="0.4">${text}</text></svg>`;
    return sharp(Buffer.from(svg)).png().toBuffer();
  }),
);
configureSharp(config.imageFormats);
const app = await buildApp({ config: { ...config, manifest: loaded.path }, manifest, logger: pino({ level: 'warn' }) });
await app.ocular.models.loadAll();

type Stage = 'preprocess' | 'queue' | 'inference' | 'postprocess' | 'total';
const STAGES: Stage[] = ['preprocess', 'queue', 'inference', 'postprocess', 'total'];

function timingsOf(header: unknown): Record<Stage, number> {
  const out = { preprocess: 0, queue: 0, inference: 0, postprocess: 0, total: 0 };
  for (const part of String(header).split(',')) {
    const m = /^\s*(\w+);dur=([\d.]+)/.exec(part);
    if (m !== null && m[1] !== undefined && m[1] in out) out[m[1] as Stage] = Number(m[2]);
  }
  return out;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

async function predict(model: string, body: Buffer, query: string) {
  const res = await app.inject({ method: 'POST', url: `/v1/models/${model}/predict${query}`, headers: { 'content-type': 'application/octet-stream' }, payload: body });
  if (res.statusCode !== 200) throw new Error(`${model}${query}: ${res.statusCode} ${res.body.slice(0, 200)}`);
  return res;
}

const rounds = Number(values.rounds);
const modes = [
  { name: 'nearest, RLE', model: entry.name, query: '' },
  { name: 'nearest, PNG', model: entry.name, query: '?format=png' },
  { name: 'bilinear, RLE', model: bilinear.name, query: '' },
];
const rows: string[] = [];
for (const file of PHOTOS) {
  const body = readFileSync(join(shared, 'images', file));
  const meta = await sharp(body).metadata();
  for (const mode of modes) {
    await predict(mode.model, body, mode.query);
    const samples = STAGES.map(() => [] as number[]);
    for (let r = 0; r < rounds; r++) {
      const t = timingsOf((await predict(mode.model, body, mode.query)).headers['server-timing']);
      STAGES.forEach((s, i) => samples[i]?.push(t[s]));
    }
    rows.push(`| ${file} (${meta.width}x${meta.height}) | ${mode.name} | ${samples.map((s) => median(s).toFixed(1)).join(' | ')} |`);
  }
}
console.log(`${rounds} rounds per row, medians in ms, one request at a time (${new Date().toISOString()})\n`);
console.log('| photo | mask | preprocess | queue | inference | postprocess | total |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
console.log(rows.join('\n'));

/** PASCAL VOC's colour map (bit-interleaved class index), the colours its ground-truth PNGs use. */
function vocColour(index: number): [number, number, number] {
  const c: [number, number, number] = [0, 0, 0];
  let id = index;
  for (let shift = 7; shift >= 0 && id > 0; shift--) {
    for (let ch = 0; ch < 3; ch++) c[ch] = (c[ch] as number) | (((id >> ch) & 1) << shift);
    id >>= 3;
  }
  return c;
}

if (values.overlays !== undefined) {
  const dir = resolve(values.overlays);
  mkdirSync(dir, { recursive: true });
  for (const file of OVERLAID) {
    const body = readFileSync(join(shared, 'images', file));
    const res = await predict(entry.name, body, '?format=png');
    const maskPng = res.rawPayload;
    const stem = file.replace(/\.[a-z]+$/, '');
    writeFileSync(join(dir, `${stem}.mask.png`), maskPng);
    const map = await sharp(maskPng).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
    const photo = await sharp(body).rotate().removeAlpha().raw().toBuffer({ resolveWithObject: true });
    const { width, height } = map.info;
    const out = Buffer.from(photo.data);
    for (let i = 0; i < width * height; i++) {
      const cls = map.data[i] as number;
      if (cls === 0 || cls === 255) continue; // background and void stay as they are
      const [r, g, b] = vocColour(cls);
      out[3 * i] = Math.round(((out[3 * i] as number) + r) / 2);
      out[3 * i + 1] = Math.round(((out[3 * i + 1] as number) + g) / 2);
      out[3 * i + 2] = Math.round(((out[3 * i + 2] as number) + b) / 2);
    }
    const labels = String(res.headers['ocular-mask-labels'])
      .split(',')
      .map((p) => p.split('='))
      .map(([i, l]) => ({ index: Number(i), label: decodeURIComponent(l ?? '') }))
      .filter((c) => c.index !== 0);
    await sharp(out, { raw: { width, height, channels: 3 } })
      .composite(labels.map((c, k) => ({ input: legendEntries[c.index] as Buffer, top: 4 + 20 * k, left: 4 })))
      .png()
      .toFile(join(dir, `${stem}.overlay.png`));
    console.log(`wrote ${join(dir, `${stem}.overlay.png`)} and ${stem}.mask.png (classes: ${labels.map((c) => c.label).join(', ')})`);
  }
}
await app.close();
