import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import {
  loadManifest,
  ManifestError,
  manifestJsonSchema,
  parseManifest,
  type ModelEntry,
} from '../../src/config/manifest.js';
import { projectRoot } from '../helpers/shared.js';

const SHA = 'a'.repeat(64);

/** The smallest valid classification entry; cases below override one thing each. */
function entry(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'm',
    task: 'image-classification',
    source: 'model.onnx',
    labels: 'labels.txt',
    input: { width: 224, height: 224 },
    ...over,
  };
}

function input(over: Record<string, unknown>): Record<string, unknown> {
  return { width: 224, height: 224, ...over };
}

/** The entry's stage fields (a classification or detection model; OCR has them per stage). */
function singleStage(m: ModelEntry | undefined): Exclude<ModelEntry, { task: 'ocr' }> | undefined {
  return m === undefined || m.task === 'ocr' ? undefined : m;
}

/** parseManifest expecting a ManifestError; returns its message ('' and a failure otherwise). */
function manifestErrorOf(t: Test, json: unknown): string {
  try {
    parseManifest(json);
  } catch (err) {
    t.type(err, ManifestError);
    return err instanceof Error ? err.message : '';
  }
  t.fail(`expected a ManifestError for ${JSON.stringify(json)}`);
  return '';
}

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-manifest-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

t.test('models.manifest.json parses, with defaults applied', async (t) => {
  const path = join(projectRoot, 'models.manifest.json');
  const loaded = await loadManifest(path);
  t.equal(loaded.path, path);
  t.equal(loaded.baseDir, projectRoot);
  const [ocr] = loaded.manifest.models;
  t.equal(loaded.manifest.models.length, 1);
  if (ocr?.task !== 'ocr') {
    t.fail('the first model is the OCR model');
    return;
  }
  t.equal(ocr.name, 'ocr');
  t.equal(ocr.version, 'ppocrv4-1');
  t.equal(ocr.detector.input.resize.mode, 'limit-round32');
  t.equal(ocr.detector.input.dtype, undefined, 'dtype: by default, what the model declares');
  t.equal(ocr.detector.instances, 1, 'instances default');
  t.equal(ocr.detector.maxDownloadBytes, 2 * 1024 ** 3, 'download cap default');
  t.same(ocr.recognizer.input.resize, { mode: 'stretch' }, 'resize default');
  t.equal(ocr.recognizer.input.background, '#ffffff', 'background default');
  t.equal(ocr.recognizer.batching.maxBatchSize, 16);
  t.equal(ocr.recognizer.batching.timeoutMs, undefined, 'timeout defaults to the server-wide one');
});

t.test('the shared-models fixture manifest parses, with defaults applied', async (t) => {
  const loaded = await loadManifest(join(projectRoot, 'test', 'fixtures', 'shared.manifest.json'));
  const names = loaded.manifest.models.map((m) => m.name);
  t.same(names, ['mobilenetv2', 'yolox-nano', 'ultraface', 'ocr', 'ocr-det', 'ocr-rec', 'deeplabv3', 'deeplabv3-seg']);
  const seg = loaded.manifest.models.find((m) => m.name === 'deeplabv3-seg');
  t.match(seg, { task: 'semantic-segmentation', output: { layout: 'NHWC' }, options: { upsample: 'nearest', minArea: 0 }, input: { layout: 'NHWC' } });
  const [mobilenet, yolox, ultraface] = loaded.manifest.models;
  t.equal(mobilenet?.task, 'image-classification');
  if (mobilenet?.task === 'image-classification') {
    t.equal(mobilenet.version, '12-int8');
    t.equal(mobilenet.input.dtype, undefined);
    t.equal(mobilenet.output, undefined);
  }
  if (yolox?.task === 'object-detection') {
    t.equal(yolox.options.classAgnostic, false, 'classAgnostic default');
    t.same(yolox.head, { type: 'yolox', strides: [8, 16, 32] });
    t.same(yolox.input.resize, { mode: 'letterbox', anchor: 'top-left', padValue: 114 });
  } else t.fail('yolox-nano is a detection model');
  if (ultraface?.task === 'object-detection') {
    t.equal(ultraface.input.background, '#ffffff', 'background default');
    t.same(ultraface.head, { type: 'ssd', scoresOutput: 'scores', boxesOutput: 'boxes' });
  } else t.fail('ultraface is a detection model');
});

t.test('a minimal entry gets every default', async (t) => {
  const m = parseManifest({ models: [entry()] });
  const model = singleStage(m.models[0]);
  t.match(model, {
    name: 'm',
    version: '1',
    maxDownloadBytes: 2 * 1024 ** 3,
    instances: 1,
    batching: { maxBatchSize: 8, maxQueueDelayMs: 0, maxQueueSize: 64, tune: 'cpu' },
    options: { topK: 5, softmax: 'auto' },
    input: {
      layout: 'NCHW',
      channelOrder: 'RGB',
      resize: { mode: 'stretch' },
      kernel: 'linear',
      background: '#ffffff',
      scale: 1 / 255,
      mean: [0, 0, 0],
      std: [1, 1, 1],
    },
  });
  t.equal(model?.batching.timeoutMs, undefined);
  t.equal(model !== undefined && 'input' in model ? model.input.dtype : 'no input', undefined, "no dtype: the model's own input type");

  const partial = singleStage(parseManifest({ models: [entry({ batching: { maxBatchSize: 2 } })] }).models[0]);
  t.same(partial?.batching, { maxBatchSize: 2, maxQueueDelayMs: 0, maxQueueSize: 64, tune: 'cpu', padBatches: 'gpu' }, 'defaults fill a partial batching');

  const det = parseManifest({
    models: [entry({ task: 'object-detection', head: { type: 'ssd' }, input: input({ resize: { mode: 'letterbox' } }) })],
  }).models[0];
  t.match(det, {
    head: { type: 'ssd', scoresOutput: 'scores', boxesOutput: 'boxes' },
    options: { scoreThreshold: 0.3, iouThreshold: 0.45, maxDetections: 100, classAgnostic: false },
    input: { resize: { mode: 'letterbox', anchor: 'center', padValue: 114 } },
  });

  const seg = parseManifest({ models: [entry({ task: 'semantic-segmentation' })] }).models[0];
  t.match(seg, { output: { layout: 'NCHW' }, options: { upsample: 'nearest', minArea: 0 } }, 'segmentation: NCHW logits, nearest');
  t.throws(() => parseManifest({ models: [entry({ task: 'semantic-segmentation', output: { layout: 'HWC' } })] }), /output\.layout/);
  t.throws(() => parseManifest({ models: [entry({ task: 'semantic-segmentation', options: { upsample: 'cubic' } })] }), /options\.upsample/);
});

t.test('an https source with a sha256 is accepted', async (t) => {
  const m = parseManifest({ models: [entry({ source: 'https://models.example/m.onnx', sha256: SHA })] });
  t.equal(singleStage(m.models[0])?.source, 'https://models.example/m.onnx');
});

t.test('an http source with a sha256 parses (the server option decides whether it may be fetched)', async (t) => {
  const m = parseManifest({ models: [entry({ source: 'http://mirror.internal/m.onnx', sha256: SHA })] });
  t.equal(singleStage(m.models[0])?.source, 'http://mirror.internal/m.onnx');
});

t.test('instances: a count as given, or auto', async (t) => {
  t.equal(singleStage(parseManifest({ models: [entry({ instances: 3 })] }).models[0])?.instances, 3);
  t.equal(singleStage(parseManifest({ models: [entry({ instances: 'auto' })] }).models[0])?.instances, 'auto');
});

t.test('invalid manifests are refused with a message naming the path', async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ['missing models', {}, /models: .*expected array/],
    ['empty models', { models: [] }, /models: the manifest lists no model/],
    ['not an object', [entry()], /\(root\): .*expected object/],
    ['duplicate names', { models: [entry(), entry({ labels: 'other.txt' })] }, /models\[1\]\.name: duplicate model name "m"/],
    ['upper-case name', { models: [entry({ name: 'MobileNet' })] }, /models\[0\]\.name: must be 1-63 of a-z/],
    ['name with a slash', { models: [entry({ name: 'a/b' })] }, /models\[0\]\.name: must be/],
    ['name starting with a dot', { models: [entry({ name: '.hidden' })] }, /models\[0\]\.name: must be/],
    ['name too long', { models: [entry({ name: 'a'.repeat(64) })] }, /models\[0\]\.name: must be/],
    ['unknown task', { models: [entry({ task: 'segmentation' })] }, /models\[0\]\.task: .*image-classification/],
    ['unknown top-level key', { models: [entry()], model: [] }, /\(root\): Unrecognized key: "model"/],
    ['unknown entry key', { models: [entry({ lables: 'x' })] }, /models\[0\]: Unrecognized key: "lables"/],
    ['unknown nested key', { models: [entry({ input: input({ colour: 'RGB' }) })] }, /models\[0\]\.input: Unrecognized key: "colour"/],
    [
      'unknown batching key',
      { models: [entry({ batching: { maxBatch: 4 } })] },
      /models\[0\]\.batching: Unrecognized key: "maxBatch"/,
    ],
    ['http source without sha256', { models: [entry({ source: 'http://mirror.internal/m.onnx' })] }, /models\[0\]\.sha256: a URL source must carry a sha256/],
    ['upper-case HTTP:// source', { models: [entry({ source: 'HTTP://mirror.internal/m.onnx', sha256: SHA })] }, /models\[0\]\.source: a URL source must be https/],
    ['ftp:// source', { models: [entry({ source: 'ftp://models.example/m.onnx', sha256: SHA })] }, /models\[0\]\.source: a URL source must be https/],
    ['https source without sha256', { models: [entry({ source: 'https://models.example/m.onnx' })] }, /models\[0\]\.sha256: a URL source must carry a sha256/],
    ['sha256 too short', { models: [entry({ sha256: 'abc' })] }, /models\[0\]\.sha256: must be 64 lowercase hex digits/],
    ['sha256 upper-case', { models: [entry({ sha256: 'A'.repeat(64) })] }, /models\[0\]\.sha256: must be 64 lowercase hex digits/],
    ['wrong layout', { models: [entry({ input: input({ layout: 'CHW' }) })] }, /models\[0\]\.input\.layout: .*NCHW.*NHWC/],
    ['mean of 2 numbers', { models: [entry({ input: input({ mean: [0.5, 0.5] }) })] }, /models\[0\]\.input\.mean: /],
    ['mean of 4 numbers', { models: [entry({ input: input({ mean: [0.5, 0.5, 0.5, 0.5] }) })] }, /models\[0\]\.input\.mean: /],
    ['std containing 0', { models: [entry({ input: input({ std: [1, 0, 1] }) })] }, /models\[0\]\.input\.std: std must not contain 0/],
    [
      'letterbox padValue 300',
      { models: [entry({ input: input({ resize: { mode: 'letterbox', padValue: 300 } }) })] },
      /models\[0\]\.input\.resize\.padValue: .*255/,
    ],
    ['unknown resize mode', { models: [entry({ input: input({ resize: { mode: 'fit' } }) })] }, /models\[0\]\.input\.resize\.mode: /],
    ['bad background', { models: [entry({ input: input({ background: 'white' }) })] }, /models\[0\]\.input\.background: must be a #rrggbb colour/],
    ['width 0', { models: [entry({ input: input({ width: 0 }) })] }, /models\[0\]\.input\.width: /],
    ['width as a string', { models: [entry({ input: input({ width: '224' }) })] }, /models\[0\]\.input\.width: .*expected number/],
    ['maxBatchSize 0', { models: [entry({ batching: { maxBatchSize: 0 } })] }, /models\[0\]\.batching\.maxBatchSize: .*>=1/],
    ['URL labels without labelsSha256', { models: [entry({ labels: 'https://example.com/labels.txt' })] }, /models\[0\]\.labelsSha256: a URL labels file must carry a labelsSha256/],
    ['labels of another scheme', { models: [entry({ labels: 'ftp://example.com/labels.txt' })] }, /models\[0\]\.labels: a URL source must be https:\/\//],
    ['a bad labelsSha256', { models: [entry({ labelsSha256: 'abc' })] }, /models\[0\]\.labelsSha256: must be 64 lowercase hex digits/],
    ['detection without head', { models: [entry({ task: 'object-detection' })] }, /models\[0\]\.head: /],
    ['unknown provider', { models: [entry({ providers: ['rocm'] })] }, /models\[0\]\.providers\[0\]: /],
    ['instances 0', { models: [entry({ instances: 0 })] }, /models\[0\]\.instances: /],
    ['instances as a word', { models: [entry({ instances: 'two' })] }, /models\[0\]\.instances: /],
    ['instances 2.5', { models: [entry({ instances: 2.5 })] }, /models\[0\]\.instances: /],
  ];
  for (const [what, json, want] of cases) {
    const message = manifestErrorOf(t, json);
    t.match(message, want, what);
    t.match(message, /^manifest is invalid:\n {2}/, `${what}: one problem per indented line`);
  }
});

t.test('the path of a problem in the second model or an OCR stage is exact', async (t) => {
  const second = manifestErrorOf(t, { models: [entry(), entry({ name: 'n', input: input({ width: -1 }) })] });
  t.match(second, /models\[1\]\.input\.width: /);

  const ocr = {
    name: 'ocr',
    task: 'ocr',
    detector: { source: 'https://models.example/det.onnx', input: input({ resize: { mode: 'limit-round32' } }) },
    recognizer: { source: 'rec.onnx', labels: 'keys.txt', input: input({ height: 48 }) },
  };
  t.match(manifestErrorOf(t, { models: [ocr] }), /models\[0\]\.detector\.sha256: a URL source must carry a sha256/);
  const badRec = { ...ocr, detector: { ...ocr.detector, sha256: SHA }, recognizer: { ...ocr.recognizer, labels: undefined } };
  t.match(manifestErrorOf(t, { models: [badRec] }), /models\[0\]\.recognizer\.labels: /, "the recogniser's dictionary is required: no model carries it");
  const urlRec = { ...ocr, detector: { ...ocr.detector, sha256: SHA }, recognizer: { ...ocr.recognizer, labels: 'https://example.com/keys.txt' } };
  t.match(manifestErrorOf(t, { models: [urlRec] }), /models\[0\]\.recognizer\.labelsSha256: a URL labels file must carry/);
  const goodOcr = parseManifest({ models: [{ ...ocr, detector: { ...ocr.detector, sha256: SHA } }] }).models[0];
  t.match(goodOcr, { options: { binaryThreshold: 0.3, boxThreshold: 0.6, unclipRatio: 1.5, minTextScore: 0.5 } });
});

t.test('several problems are listed together', async (t) => {
  const message = manifestErrorOf(t, {
    models: [entry({ name: 'Bad', input: input({ layout: 'CHW', std: [0, 1, 1] }), batching: { maxBatchSize: 0 } })],
  });
  t.match(message, /models\[0\]\.name: /);
  t.match(message, /models\[0\]\.input\.layout: /);
  t.match(message, /models\[0\]\.input\.std: /);
  t.match(message, /models\[0\]\.batching\.maxBatchSize: /);
});

t.test('loadManifest names the file it cannot read', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'absent.json');
  await t.rejects(loadManifest(path), ManifestError);
  await t.rejects(loadManifest(path), { message: new RegExp(`cannot read manifest ${escape(path)}`) });
});

t.test('loadManifest names a file that is not valid JSON', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'broken.json');
  await writeFile(path, '{ "models": [ }');
  await t.rejects(loadManifest(path), ManifestError);
  await t.rejects(loadManifest(path), { message: new RegExp(`manifest ${escape(path)} is not valid JSON`) });
});

t.test('loadManifest names the file whose content is invalid, and resolves relative to its folder', async (t) => {
  const dir = await tempDir(t);
  const bad = join(dir, 'bad.json');
  await writeFile(bad, JSON.stringify({ models: [entry({ task: 'nope' })] }));
  await t.rejects(loadManifest(bad), { message: new RegExp(`manifest ${escape(bad)} is invalid:\\n {2}models\\[0\\]\\.task`) });

  const good = join(dir, 'good.json');
  await writeFile(good, JSON.stringify({ models: [entry()] }));
  const loaded = await loadManifest(good);
  t.equal(loaded.baseDir, dir);
  t.equal(loaded.path, good);
});

t.test('manifestJsonSchema is a JSON Schema of the manifest', async (t) => {
  const schema = manifestJsonSchema() as Record<string, unknown>;
  t.equal(typeof schema, 'object');
  t.match(String(schema['$schema']), /json-schema\.org/);
  t.equal(schema['type'], 'object');
  const properties = schema['properties'] as Record<string, unknown> | undefined;
  t.ok(properties && 'models' in properties, 'models is a property');
  t.match(schema['required'], ['models']);
  t.equal(schema['additionalProperties'], false, 'strict at the top level');
});

t.test('docs/manifest.schema.json is up to date (regenerate: npx tsx scripts/write-manifest-schema.ts)', async (t) => {
  const committed = await readFile(join(projectRoot, 'docs', 'manifest.schema.json'), 'utf8');
  t.equal(committed, `${JSON.stringify(manifestJsonSchema(), null, 2)}\n`);
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

t.test('labels may be left out (class names from the model) or given as an https:// URL with labelsSha256', async (t) => {
  const SHA = 'a'.repeat(64);
  const none = singleStage(parseManifest({ models: [entry({ labels: undefined })] }).models[0]);
  t.equal(none !== undefined && 'labels' in none ? none.labels : 'absent', undefined);
  const url = parseManifest({ models: [entry({ labels: 'https://example.com/labels.txt', labelsSha256: SHA })] }).models[0];
  t.match(url, { labels: 'https://example.com/labels.txt', labelsSha256: SHA });
});
