/**
 * Rows of a batch: split into each request's views, and joined back into one batch for a v2 answer of several
 * images, as a view where the rows lie end to end in one buffer, else as a copy.
 */
import t from 'tap';
import { joinRows, splitBatch } from '../../src/core/rows.js';
import type { Outputs } from '../../src/core/types.js';

function batchOf(rows: number, per: number): Outputs {
  const data = Float32Array.from({ length: rows * per }, (_, i) => i);
  const exact = BigInt64Array.from({ length: rows * per }, (_, i) => BigInt(i));
  return { out: { data, dims: [rows, per], exact: { type: 'int64', data: exact } } };
}

t.test('the rows of one batch, in order, join as a view of the batch buffer', async (t) => {
  const batch = batchOf(3, 2);
  const joined = joinRows(splitBatch(batch, 3)).out;
  t.same(joined?.dims, [3, 2]);
  t.same([...(joined?.data ?? [])], [0, 1, 2, 3, 4, 5]);
  t.equal(joined?.data.buffer, batch.out?.data.buffer, 'no copy: the same buffer');
  t.equal(joined?.exact?.data.buffer, batch.out?.exact?.data.buffer, 'exact elements too');
  t.same([...(joined?.exact?.data ?? [])], [0n, 1n, 2n, 3n, 4n, 5n]);
});

t.test('rows out of order, or from different batches, are copied in the order given', async (t) => {
  const [a, b, c] = splitBatch(batchOf(3, 2), 3) as [Outputs, Outputs, Outputs];
  const swapped = joinRows([c, a, b]).out;
  t.same([...(swapped?.data ?? [])], [4, 5, 0, 1, 2, 3]);
  t.same([...(swapped?.exact?.data ?? [])], [4n, 5n, 0n, 1n, 2n, 3n]);
  const other = splitBatch(batchOf(1, 2), 1)[0] as Outputs;
  const mixed = joinRows([a, other]).out;
  t.same(mixed?.dims, [2, 2]);
  t.same([...(mixed?.data ?? [])], [0, 1, 0, 1]);
  t.not(mixed?.data.buffer, other.out?.data.buffer, 'a new buffer');
});

t.test('one row is its own batch; exact elements are kept only where every row has them', async (t) => {
  const [a, b] = splitBatch(batchOf(2, 2), 2) as [Outputs, Outputs];
  t.equal(joinRows([a]), a, 'one image: its outputs as they are');
  const plain: Outputs = { out: { data: Float32Array.of(7, 8), dims: [1, 2] } };
  const joined = joinRows([b, plain]).out;
  t.same([...(joined?.data ?? [])], [2, 3, 7, 8]);
  t.equal(joined?.exact, undefined, 'no exact elements: one row has none');
  t.same(joinRows([]), {});
});
