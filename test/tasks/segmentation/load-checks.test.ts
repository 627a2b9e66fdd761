/**
 * A segmentation entry is checked against the model when it loads (src/tasks/segmentation/pipeline.ts): the
 * output's layout and rank, the class count against the labels, and upsampling a class map. Each mismatch fails
 * loading, naming the model and the manifest field; the fixture's entry loads.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { registryLoadError } from '../../helpers/load-error.js';
import { sharedModel } from '../../helpers/app.js';
import { sharedTestOptions } from '../../helpers/shared.js';

t.setTimeout(300_000);

const MODEL = 'models/deeplabv3-mobilenetv2-voc/model.onnx';

async function loadError(t: Test, patch: Record<string, unknown>): Promise<string | undefined> {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-seg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const entry = { ...sharedModel('deeplabv3-seg'), ...patch };
  const manifestPath = join(dir, 'manifest.json');
  await writeFile(manifestPath, JSON.stringify({ models: [entry] }));
  return registryLoadError(t, manifestPath, dir);
}

t.test('segmentation entries are checked against the model', sharedTestOptions(MODEL), async (t) => {
  t.equal(await loadError(t, {}), undefined, "the fixture's entry loads");
  t.match(await loadError(t, { output: { layout: 'NCHW' } }), /deeplabv3-seg.*labels: 21 labels, but the NCHW output "ResizeBilinear_3" has 257 classes/);
  t.match(await loadError(t, { output: { layout: 'class-map' } }), /output\.layout: class-map needs an output of rank 3/);
  const dir = await mkdtemp(join(tmpdir(), 'ocular-seg-labels-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const labels = (await readFile(String(sharedModel('deeplabv3-seg')['labels']), 'utf8')).split('\n').filter((l) => l !== '');
  await writeFile(join(dir, 'labels.txt'), labels.slice(0, 20).join('\n') + '\n');
  t.match(await loadError(t, { labels: join(dir, 'labels.txt') }), /labels: 20 labels, but the NHWC output "ResizeBilinear_3" has 21 classes/);
  t.match(await loadError(t, { output: { layout: 'NHWC', name: 'nope' } }), /output\.name: the model has no output "nope"/);
});
