/**
 * An instance-segmentation, pose or oriented-box export given to an image task fails to load at startup, with a
 * message naming what was recognised and that Ocular does not serve it (src/core/stage-loader.ts,
 * rejectUnsupportedExport); served as raw tensors (task "tensor") the same file loads.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { registryLoadError } from '../helpers/load-error.js';
import { encodeExport, EXPORTS, type ExportShape } from '../helpers/export-shapes.js';

t.setTimeout(120_000);

async function loadError(t: Test, shape: ExportShape, task: 'object-detection' | 'tensor', size = 640): Promise<string | undefined> {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-unsupported-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const model = encodeExport(shape);
  await writeFile(join(dir, 'model.onnx'), model);
  await writeFile(join(dir, 'labels.txt'), Array.from({ length: 80 }, (_, i) => `class ${i}`).join('\n'));
  const stage = { source: 'model.onnx', sha256: createHash('sha256').update(model).digest('hex') };
  const entry =
    task === 'tensor'
      ? { name: 'm', task, ...stage }
      : {
          name: 'm',
          task,
          ...stage,
          labels: 'labels.txt',
          input: { width: size, height: size, resize: { mode: 'letterbox' } },
          head: { type: 'yolox' },
          batching: { maxBatchSize: 1 },
        };
  await writeFile(join(dir, 'manifest.json'), JSON.stringify({ models: [entry] }));
  return registryLoadError(t, join(dir, 'manifest.json'), dir);
}

t.test('a YOLO seg export (shapes alone) fails to load as a detector, naming the mask prototypes', async (t) => {
  t.match(
    await loadError(t, EXPORTS.segNoMetadata, 'object-detection'),
    /model "m": source: this looks like an instance segmentation export \(output "output1" \[1,32,160,160\] looks like 32 mask prototypes.*\), which Ocular does not serve/,
  );
});

t.test('a pose export fails to load by its metadata', async (t) => {
  t.match(await loadError(t, EXPORTS.pose, 'object-detection'), /this looks like a pose \(keypoint\) export \(.*metadata task is "pose"/);
});

t.test('an oriented-box export fails to load by its metadata', async (t) => {
  t.match(await loadError(t, EXPORTS.obb, 'object-detection', 1024), /this looks like an oriented-box \(OBB\) export/);
});

t.test('the same seg export loads as raw tensors', async (t) => {
  t.equal(await loadError(t, EXPORTS.seg, 'tensor'), undefined);
});
