import t from 'tap';
import { profileFeeds } from '../../../src/core/runner/profiling.js';
import type { WorkerInit } from '../../../src/core/runner/worker-protocol.js';
import type { TensorMeta } from '../../../src/core/types.js';

const input = (shape: number[]): TensorMeta => ({ name: 'x', type: 'float32', shape, symbolicShape: shape.map((d) => (d < 0 ? 'd' : '')) });
const init = (warmupDims: number[]): WorkerInit => ({ warmupDims }) as unknown as WorkerInit;

t.test('the profiled run takes warmupDims, its batch replaced by a batch dim the model fixes', async (t) => {
  // The OCR stages ask for a full batch at a bucket's size (a shape within their bound, padded or not).
  t.same(profileFeeds(init([4, 3, 544, 704]), 'x', [input([-1, 3, -1, -1])])['x']?.dims, [4, 3, 544, 704]);
  t.same(profileFeeds(init([4, 3, 544, 704]), 'x', [input([1, 3, -1, -1])])['x']?.dims, [1, 3, 544, 704], 'a model of batch 1 runs 1');
  t.same(profileFeeds(init([1, 3, 48, 320]), 'x', [input([-1, 3, 48, -1])])['x']?.dims, [1, 3, 48, 320]);
});
