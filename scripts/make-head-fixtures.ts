/**
 * Writes the detection-head fixtures the tests use (test/helpers/head-models.ts) to a folder, with a manifest that
 * serves each: the shared yolox-nano re-emitted in every head's layout. For trying a head, or `models:inspect`, by
 * hand. The files hold the shared weights: write them outside the repository or under a git-ignored folder.
 *
 *   npx tsx scripts/make-head-fixtures.ts [out-dir]     (default .cache/head-fixtures)
 */
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { sharedModel } from '../test/helpers/app.js';
import { YOLOX_HEAD_VARIANTS, wrapYoloxNano, writeModel } from '../test/helpers/head-models.js';
import { modelPath, projectRoot } from '../test/helpers/shared.js';

const out = resolve(process.argv[2] ?? join(projectRoot, '.cache', 'head-fixtures'));
const base = sharedModel('yolox-nano');
const models = YOLOX_HEAD_VARIANTS.map((variant) => {
  const { model, head } = wrapYoloxNano(join(modelPath('yolox-nano'), '..'), variant);
  const { path, sha256 } = writeModel(out, `yolox-nano-${variant}`, model);
  return { ...base, name: variant, source: path, sha256, head };
});
const manifest = join(out, 'manifest.json');
writeFileSync(manifest, `${JSON.stringify({ models }, null, 2)}\n`);
process.stdout.write(`wrote ${models.length} models and ${manifest}\n`);
