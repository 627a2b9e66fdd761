/**
 * `npx tsx scripts/make-examples.ts`: writes the images the project draws itself rather than commit photos it did
 * not make (SVG rendered by sharp, text in DejaVu Sans where fontconfig finds it). The files are committed, so a
 * fresh clone has them:
 * - examples/sign.png, the image the README's examples send (a "NO PARKING" sign), also the playground's OCR sample
 *   (public/samples/no-parking.png);
 * - public/samples/stop-sign.png, the playground's detection sample (yolox-nano finds a COCO "stop sign");
 * - public/samples/television.png, its classification and segmentation sample (mobilenetv2 answers "television",
 *   deeplabv3 a VOC "tvmonitor").
 */
import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const text = (x: number, y: number, size: number, fill: string, words: string) =>
  `<text x="${x}" y="${y}" font-family="DejaVu Sans, sans-serif" font-size="${size}" font-weight="bold" fill="${fill}" text-anchor="middle">${words}</text>`;

const svg = (width: number, height: number, body: string) => `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${body}</svg>`;

const noParking = svg(
  640,
  360,
  `<rect width="100%" height="100%" fill="#dfe6ec"/>
<rect x="120" y="60" width="400" height="240" rx="18" fill="#ffffff" stroke="#c0392b" stroke-width="14"/>
${text(320, 165, 64, '#c0392b', 'NO')}
${text(320, 245, 64, '#c0392b', 'PARKING')}`,
);

/** A regular octagon around (cx, cy) with a flat top. */
const octagon = (cx: number, cy: number, r: number) =>
  Array.from({ length: 8 }, (_, i) => {
    const a = Math.PI / 8 + (i * Math.PI) / 4;
    return `${(cx + r * Math.cos(a)).toFixed(1)},${(cy + r * Math.sin(a)).toFixed(1)}`;
  }).join(' ');

const stopSign = svg(
  640,
  480,
  `<rect width="640" height="300" fill="#a9cce3"/><rect y="300" width="640" height="180" fill="#95a5a6"/>
<rect x="464" y="170" width="12" height="270" fill="#7f8c8d"/>
<polygon points="${octagon(470, 170, 90)}" fill="#ffffff"/><polygon points="${octagon(470, 170, 81)}" fill="#c0392b"/>
${text(470, 190, 54, '#ffffff', 'STOP')}`,
);

const television = svg(
  640,
  480,
  `<rect width="640" height="480" fill="#dfe6ec"/>
<rect x="110" y="60" width="420" height="280" rx="10" fill="#1b1b1b"/><rect x="130" y="80" width="380" height="240" fill="#3498db"/>
<rect x="300" y="340" width="40" height="60" fill="#333333"/><rect x="220" y="400" width="200" height="20" rx="6" fill="#333333"/>`,
);

const outputs: [string, string][] = [
  ['examples/sign.png', noParking],
  ['public/samples/no-parking.png', noParking],
  ['public/samples/stop-sign.png', stopSign],
  ['public/samples/television.png', television],
];
for (const [file, drawing] of outputs) {
  const out = join(root, file);
  await mkdir(dirname(out), { recursive: true });
  await sharp(Buffer.from(drawing)).png({ compressionLevel: 9, palette: true }).toFile(out);
  console.log(`wrote ${out}`);
}
