import t from 'tap';
import {
  classify,
  isProbabilityDistribution,
  softmax,
  topKIndices,
} from '../../src/tasks/classification/postprocess.js';
import { readLabels } from '../../src/tasks/labels.js';
import { modelPath, readTensorProto, sharedTestOptions } from '../helpers/shared.js';

const f32 = (...v: number[]): Float32Array => Float32Array.from(v);

/** Reference softmax computed independently, in float64 without max subtraction (safe for small logits). */
function naiveSoftmax(v: readonly number[]): number[] {
  const e = v.map((x) => Math.exp(x));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

t.test('softmax matches a direct computation and sums to 1', async (t) => {
  const logits = [1.5, -2, 0.25, 3, 3];
  const got = softmax(f32(...logits));
  const want = naiveSoftmax(logits);
  for (let i = 0; i < logits.length; i++) t.ok(Math.abs((got[i] as number) - (want[i] as number)) < 1e-6, `class ${i}`);
  t.ok(Math.abs(got.reduce((a, b) => a + b, 0) - 1) < 1e-6);
});

t.test('softmax is stable for large logits', async (t) => {
  const got = softmax(f32(1000, 1000, 990));
  t.ok(got.every((v) => Number.isFinite(v)));
  t.ok(Math.abs((got[0] as number) - 0.49998) < 1e-4);
});

t.test('a probability row is recognised; logits, negatives and bad sums are not', async (t) => {
  t.ok(isProbabilityDistribution(f32(0.2, 0.3, 0.5)));
  t.ok(isProbabilityDistribution(f32(0.2, 0.3, 0.5005)), 'within 1e-3 of 1');
  t.notOk(isProbabilityDistribution(f32(0.2, 0.3, 0.502)), 'sum off by 2e-3');
  t.notOk(isProbabilityDistribution(f32(1.2, -0.2)), 'sums to 1 but has values outside [0, 1]');
  t.notOk(isProbabilityDistribution(f32(0.5, 0.4)), 'sigmoid-like row that does not sum to 1');
  t.notOk(isProbabilityDistribution(f32(0.5, Number.NaN, 0.5)));
});

t.test("'auto' leaves probabilities as they are and applies softmax to logits", async (t) => {
  const probs = classify(f32(0.1, 0.7, 0.2), ['a', 'b', 'c'], { topK: 1, softmax: 'auto' });
  t.same(probs.map((c) => c.index), [1]);
  t.ok(Math.abs((probs[0]?.score ?? 0) - 0.7) < 1e-6);

  const logits = classify(f32(0, 2, 1), ['a', 'b', 'c'], { topK: 3, softmax: 'auto' });
  const want = naiveSoftmax([0, 2, 1]);
  t.same(logits.map((c) => c.label), ['b', 'c', 'a']);
  t.ok(Math.abs((logits[0]?.score ?? 0) - (want[1] as number)) < 1e-6);
});

t.test("'always' and 'never' override the detection", async (t) => {
  const row = f32(0.1, 0.7, 0.2);
  const always = classify(row, [], { topK: 1, softmax: 'always' });
  t.ok(Math.abs((always[0]?.score ?? 0) - (naiveSoftmax([0.1, 0.7, 0.2])[1] as number)) < 1e-6);
  const never = classify(f32(-3, 5), [], { topK: 2, softmax: 'never' });
  t.same(never.map((c) => c.score), [5, -3]);
});

t.test('top-k orders by score and breaks ties by lower index', async (t) => {
  const row = f32(0.5, 0.9, 0.5, 0.9, 0.1, 0.5);
  t.same(topKIndices(row, 4), [1, 3, 0, 2]);
  t.same(topKIndices(row, 10), [1, 3, 0, 2, 5, 4], 'k above the class count is clipped');
  t.same(topKIndices(row, 0), []);
  t.same(topKIndices(f32(Number.NaN, 1, 2), 3), [2, 1, 0], 'NaN ranks last');
});

t.test('top-k agrees with a full sort on random rows', async (t) => {
  let seed = 7;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  for (let trial = 0; trial < 20; trial++) {
    // Quantised values, so ties are frequent (as with the int8 classifier).
    const row = Float32Array.from({ length: 1000 }, () => Math.round(rand() * 50) / 10);
    const full = Array.from(row.keys()).sort((a, b) => (row[b] as number) - (row[a] as number) || a - b);
    t.same(topKIndices(row, 7), full.slice(0, 7));
  }
});

t.test('a class without a label is named by its index', async (t) => {
  const got = classify(f32(0.1, 0.9), ['only'], { topK: 2, softmax: 'never' });
  t.same(got, [
    { label: '1', index: 1, score: got[0]?.score },
    { label: 'only', index: 0, score: got[1]?.score },
  ]);
});

const mobilenet = 'models/mobilenetv2-12-int8';

t.test(
  'mobilenet on cat_chelsea: top-1 Egyptian cat ~0.67, then tiger cat and tabby',
  sharedTestOptions(`${mobilenet}/labels.txt`, `${mobilenet}/test_data_set_0/output_0.pb`),
  async (t) => {
    const labels = await readLabels(modelPath('mobilenetv2-12-int8', 'labels.txt'));
    const out = readTensorProto(modelPath('mobilenetv2-12-int8', 'test_data_set_0/output_0.pb'));
    t.same(out.dims, [1, 1000]);
    const top = classify(out.data, labels, { topK: 5, softmax: 'auto' });
    t.comment(top.map((c) => `${c.label} ${c.score.toFixed(4)}`).join('; '));
    t.equal(top[0]?.label, 'Egyptian cat');
    t.equal(top[0]?.index, 285);
    t.ok(Math.abs((top[0]?.score ?? 0) - 0.67) < 0.01);
    t.equal(top[1]?.label, 'tiger cat');
    t.ok(Math.abs((top[1]?.score ?? 0) - 0.19) < 0.01);
    t.equal(top[2]?.label, 'tabby, tabby cat');
    t.ok(Math.abs((top[2]?.score ?? 0) - 0.14) < 0.01);
  },
);

t.test(
  'mobilenet batch of 8: row 2 (coffee) is espresso ~0.997',
  sharedTestOptions(`${mobilenet}/labels.txt`, `${mobilenet}/test_data_set_1/output_0.pb`),
  async (t) => {
    const labels = await readLabels(modelPath('mobilenetv2-12-int8', 'labels.txt'));
    const out = readTensorProto(modelPath('mobilenetv2-12-int8', 'test_data_set_1/output_0.pb'));
    t.same(out.dims, [8, 1000]);
    const rowOf = (i: number): Float32Array => out.data.subarray(i * 1000, (i + 1) * 1000);
    const coffee = classify(rowOf(2), labels, { topK: 3, softmax: 'auto' });
    t.comment(coffee.map((c) => `${c.label} ${c.score.toFixed(4)}`).join('; '));
    t.equal(coffee[0]?.label, 'espresso');
    t.ok(Math.abs((coffee[0]?.score ?? 0) - 0.997) < 0.002);
    const cat = classify(rowOf(0), labels, { topK: 1, softmax: 'auto' });
    t.equal(cat[0]?.label, 'Egyptian cat', 'row 0 is the cat again');
    const dog = classify(rowOf(1), labels, { topK: 2, softmax: 'auto' });
    t.comment(dog.map((c) => `${c.label} ${c.score.toFixed(4)}`).join('; '));
    // The int8 head gives both classes the same logit: the tie goes to the lower index.
    t.equal(rowOf(1)[248], rowOf(1)[250]);
    t.same(
      dog.map((c) => c.label),
      ['Eskimo dog, husky', 'Siberian husky'],
    );
  },
);
