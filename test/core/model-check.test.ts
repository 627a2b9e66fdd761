import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { parseConfig } from '../../src/config/config.js';
import { InputSpecSchema, type InputSpec } from '../../src/config/input-spec.js';
import { loadManifest } from '../../src/config/manifest.js';
import {
  checkImageInput,
  checkLastDim,
  checkOutput,
  isDynamicSize,
  ModelCheckError,
} from '../../src/core/model-check.js';
import { ModelLoadError, ModelRegistry } from '../../src/core/registry.js';
import { createTaskPipeline } from '../../src/tasks/index.js';
import { MaskPool } from '../../src/tasks/segmentation/mask-pool.js';
import { noopTelemetry } from '../../src/core/telemetry.js';
import type { TensorMeta } from '../../src/core/types.js';
import { modelPath, sharedTestOptions } from '../helpers/shared.js';

function meta(name: string, shape: number[], type = 'float32'): TensorMeta {
  return { name, type, shape, symbolicShape: shape.map((d) => (d === -1 ? 'dim' : '')) };
}

function spec(over: Record<string, unknown> = {}): InputSpec {
  return InputSpecSchema.parse({ width: 224, height: 224, ...over });
}

/** Runs fn expecting a ModelCheckError; returns its message ('' and a failure otherwise). */
function checkErrorOf(t: Test, fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    t.type(err, ModelCheckError);
    return err instanceof Error ? err.message : '';
  }
  t.fail('expected a ModelCheckError');
  return '';
}

t.test('checkImageInput', async (t) => {
  t.test('a matching NCHW input passes and is returned', async (t) => {
    const input = meta('data', [-1, 3, 224, 224]);
    t.equal(checkImageInput('m', 'input', spec(), [input]), input);
  });

  t.test('a matching NHWC input passes', async (t) => {
    const input = meta('image', [1, 320, 416, 3]);
    t.equal(checkImageInput('m', 'input', spec({ layout: 'NHWC', width: 416, height: 320 }), [input]), input);
  });

  t.test('fully dynamic dimensions pass', async (t) => {
    t.ok(checkImageInput('m', 'input', spec(), [meta('x', [-1, -1, -1, -1])]));
  });

  t.test('a wrong width names the model, the field and both sizes', async (t) => {
    const message = checkErrorOf(t, () => checkImageInput('mobilenet', 'input', spec({ width: 300 }), [meta('data', [1, 3, 224, 224])]));
    t.match(message, /^model "mobilenet": input\.width: /);
    t.match(message, /300/);
    t.match(message, /224/);
  });

  t.test('a wrong height names input.height', async (t) => {
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec({ height: 240 }), [meta('data', [1, 3, 224, 224])]));
    t.match(message, /^model "m": input\.height: the manifest says 240, .*height 224/);
  });

  t.test('the field prefix is the one given (an OCR stage)', async (t) => {
    const message = checkErrorOf(t, () => checkImageInput('ocr', 'recognizer.input', spec({ height: 32 }), [meta('x', [-1, 3, 48, -1])]));
    t.match(message, /^model "ocr": recognizer\.input\.height: /);
  });

  t.test('channels in the wrong place (layout) are refused', async (t) => {
    const nhwcModel = [meta('image', [1, 224, 224, 3])];
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec({ layout: 'NCHW' }), nhwcModel));
    t.match(message, /^model "m": input\.layout: NCHW puts channels where .* has 224; expected 3/);
  });

  t.test('a model with 1 or 4 channels is refused', async (t) => {
    t.match(checkErrorOf(t, () => checkImageInput('m', 'input', spec(), [meta('x', [1, 1, 224, 224])])), /input\.layout: .*has 1; expected 3/);
    t.match(
      checkErrorOf(t, () => checkImageInput('m', 'input', spec({ layout: 'NHWC' }), [meta('x', [1, 224, 224, 4])])),
      /input\.layout: .*has 4; expected 3/,
    );
  });

  t.test('an input that is not rank 4 is refused', async (t) => {
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec(), [meta('x', [1, 3, 224])]));
    t.match(message, /^model "m": input\.layout: .*rank 3 \(\[1,3,224\]\)/);
  });

  t.test('float32, float16 and uint8 inputs are taken; another type is refused naming input.dtype', async (t) => {
    for (const type of ['float32', 'float16', 'uint8']) t.ok(checkImageInput('m', 'input', spec(), [meta('x', [1, 3, 224, 224], type)]), type);
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec(), [meta('x', [1, 3, 224, 224], 'int64')]));
    t.match(message, /^model "m": input\.dtype: the model's input "x" is int64; an image input may be float32, float16, uint8/);
  });

  t.test("a manifest dtype is checked against the model's", async (t) => {
    t.ok(checkImageInput('m', 'input', spec({ dtype: 'uint8', layout: 'NHWC' }), [meta('x', [1, 224, 224, 3], 'uint8')]));
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec({ dtype: 'float16' }), [meta('x', [1, 3, 224, 224])]));
    t.match(message, /^model "m": input\.dtype: the manifest says float16, the model's input "x" is float32/);
  });

  t.test('a dynamic height and width take the manifest size (detection exports with dynamic axes)', async (t) => {
    t.ok(checkImageInput('m', 'input', spec({ width: 416, height: 416 }), [meta('x', [-1, 3, -1, -1])]));
  });

  t.test('a named input is found among several', async (t) => {
    const inputs = [meta('scale_factor', [1, 2]), meta('image', [-1, 3, 224, 224])];
    t.equal(checkImageInput('m', 'input', spec({ name: 'image' }), inputs).name, 'image');
  });

  t.test('a named input that is not there lists the inputs', async (t) => {
    const inputs = [meta('images', [1, 3, 224, 224]), meta('im_shape', [1, 2])];
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec({ name: 'image' }), inputs));
    t.match(message, /^model "m": input\.name: the model has no input "image" \(inputs: images, im_shape\)/);
  });

  t.test('several inputs and no name fails asking for the name', async (t) => {
    const inputs = [meta('a', [1, 3, 224, 224]), meta('b', [1, 3, 224, 224])];
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec(), inputs));
    t.match(message, /^model "m": input\.name: the model has 2 inputs \(a, b\); name the image input/);
  });

  t.test('a model with no input fails', async (t) => {
    t.match(checkErrorOf(t, () => checkImageInput('m', 'input', spec(), [])), /input\.name: the model has 0 inputs/);
  });

  t.test('a fixed batch of 1 is accepted, a fixed batch of 2 refused', async (t) => {
    t.ok(checkImageInput('m', 'input', spec(), [meta('x', [1, 3, 224, 224])]));
    const message = checkErrorOf(t, () => checkImageInput('m', 'input', spec(), [meta('x', [2, 3, 224, 224])]));
    t.match(message, /^model "m": input\.batching: .*fixed at 2/);
  });

  t.test('limit-round32 needs a dynamic height and width', async (t) => {
    const dynamicSpec = spec({ width: 640, height: 480, resize: { mode: 'limit-round32' } });
    t.ok(isDynamicSize(dynamicSpec));
    t.notOk(isDynamicSize(spec()));
    t.ok(checkImageInput('ocr', 'detector.input', dynamicSpec, [meta('x', [-1, 3, -1, -1])]));
    t.match(
      checkErrorOf(t, () => checkImageInput('ocr', 'detector.input', dynamicSpec, [meta('x', [-1, 3, 480, 640])])),
      /^model "ocr": detector\.input\.height: resize mode limit-round32 needs a dynamic height.*480/,
    );
    t.match(
      checkErrorOf(t, () => checkImageInput('ocr', 'detector.input', dynamicSpec, [meta('x', [-1, 3, -1, 640])])),
      /^model "ocr": detector\.input\.width: .*dynamic width.*640/,
    );
  });

  t.test('dynamicWidth requires a dynamic width even when it matches', async (t) => {
    const rec = spec({ width: 320, height: 48 });
    t.ok(checkImageInput('ocr', 'recognizer.input', rec, [meta('x', [-1, 3, 48, -1])], { dynamicWidth: true }));
    t.match(
      checkErrorOf(t, () => checkImageInput('ocr', 'recognizer.input', rec, [meta('x', [-1, 3, 48, 320])], { dynamicWidth: true })),
      /recognizer\.input\.width: this model needs a dynamic width/,
    );
  });
});

t.test('checkOutput', async (t) => {
  const outputs = [meta('scores', [-1, 4420, 2]), meta('boxes', [-1, 4420, 4])];

  t.test('finds an output by name', async (t) => {
    t.equal(checkOutput('m', 'head.boxesOutput', outputs, 'boxes').name, 'boxes');
  });

  t.test('a missing name lists the outputs', async (t) => {
    const message = checkErrorOf(t, () => checkOutput('m', 'head.boxesOutput', outputs, 'bbox'));
    t.match(message, /^model "m": head\.boxesOutput: the model has no output "bbox" \(outputs: scores, boxes\)/);
  });

  t.test('no name: the only output', async (t) => {
    const only = meta('prob', [-1, 1000]);
    t.equal(checkOutput('m', 'output', [only], undefined), only);
  });

  t.test('no name and several outputs is ambiguous', async (t) => {
    const message = checkErrorOf(t, () => checkOutput('m', 'output', outputs, undefined));
    t.match(message, /^model "m": output: the model has 2 outputs \(scores, boxes\); name the one to read/);
  });
});

t.test('checkLastDim', async (t) => {
  t.test('a matching or dynamic last dimension passes', async (t) => {
    t.doesNotThrow(() => checkLastDim('m', 'labels', meta('prob', [-1, 1000]), 1000, 'classes'));
    t.doesNotThrow(() => checkLastDim('m', 'labels', meta('prob', [-1, -1]), 7, 'classes'));
    t.doesNotThrow(() => checkLastDim('m', 'labels', meta('scalar', []), 7, 'classes'), 'no dimensions: nothing to check');
  });

  t.test('a mismatch names the field, what it is, both counts and the output', async (t) => {
    const message = checkErrorOf(t, () => checkLastDim('m', 'labels', meta('prob', [-1, 1000]), 999, 'number of classes'));
    t.equal(message, `model "m": labels: number of classes: the manifest implies 999, the model's output "prob" has 1000`);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// One real check: the registry refuses a manifest that disagrees with the model, naming the model and the field
// ---------------------------------------------------------------------------------------------------------------

const MOBILENET = 'mobilenetv2-12-int8';
const realOptions = sharedTestOptions(`models/${MOBILENET}/model.onnx`, `models/${MOBILENET}/labels.txt`);

/** Writes a one-model manifest (absolute paths into the shared folder) and returns a registry on it. */
async function registryFor(t: Test, over: { width?: number; labels?: string }): Promise<ModelRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-model-check-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const manifestPath = join(dir, 'manifest.json');
  const width = over.width ?? 224;
  await writeFile(
    manifestPath,
    JSON.stringify({
      models: [
        {
          name: 'mobilenetv2',
          task: 'image-classification',
          source: modelPath(MOBILENET),
          labels: over.labels ?? modelPath(MOBILENET, 'labels.txt'),
          input: {
            width,
            height: 224,
            // The crop must fit in the resized image, or the manifest itself is refused before the model is seen.
            resize: { mode: 'shorter-side-center-crop', shorterSide: Math.max(256, width) },
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
          },
          batching: { maxBatchSize: 2 },
        },
      ],
    }),
  );
  const { config } = parseConfig({}, []);
  const registry = new ModelRegistry({
    manifest: await loadManifest(manifestPath),
    config: { ...config, device: 'cpu', intraOpThreads: 1, cacheDir: join(dir, 'cache') },
    logger: pino({ level: 'silent' }),
    telemetry: noopTelemetry,
    createPipeline: createTaskPipeline({ masks: new MaskPool(), maxResponseBytes: 64 * 1024 * 1024 }),
  });
  t.teardown(() => registry.close());
  return registry;
}

t.test('a manifest width the model does not have fails loading, naming the model and input.width', realOptions, async (t) => {
  const registry = await registryFor(t, { width: 300 });
  const err: unknown = await registry.loadAll().then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(err, ModelLoadError);
  const message = err instanceof Error ? err.message : '';
  t.match(message, /mobilenetv2/);
  t.match(message, /input\.width/);
  t.match(message, /300/);
  const [handle] = registry.list();
  t.equal(handle?.state, 'UNAVAILABLE');
  t.match(handle?.reason, /^model "mobilenetv2": input\.width: the manifest says 300/);
  t.equal(handle?.stages.length, 0, 'the half-loaded stage was closed');
  t.notOk(registry.ready);
});

t.test('a labels file with the wrong number of lines fails loading, naming labels', realOptions, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-labels-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const real = (await readFile(modelPath(MOBILENET, 'labels.txt'), 'utf8')).split('\n').filter((l) => l !== '');
  t.equal(real.length, 1000, 'the real labels file has 1000 classes');
  const labels = join(dir, 'labels-999.txt');
  await writeFile(labels, `${real.slice(0, 999).join('\n')}\n`);

  const registry = await registryFor(t, { labels });
  await t.rejects(registry.loadAll(), ModelLoadError);
  const [handle] = registry.list();
  t.equal(handle?.state, 'UNAVAILABLE');
  t.match(handle?.reason, /^model "mobilenetv2": labels: .*999.*1000/);
});

t.test('the same manifest with the right width and labels loads', realOptions, async (t) => {
  const registry = await registryFor(t, {});
  await registry.loadAll();
  const [handle] = registry.list();
  t.equal(handle?.state, 'READY');
  t.ok(registry.ready);
});
