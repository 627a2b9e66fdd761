import t from 'tap';
import { balancedOrder } from '../../scripts/lib/stats.js';

t.test('balancedOrder: over one cycle, every position and every predecessor equally often', async (t) => {
  for (let n = 1; n <= 7; n++) {
    const cycle = n % 2 === 0 ? n : 2 * n;
    const rows = Array.from({ length: cycle }, (_, r) => balancedOrder(n, r));
    for (const row of rows) t.same([...row].sort((a, b) => a - b), [...Array(n).keys()], `n=${n}: ${row.join(',')} is a permutation`);
    const atPosition = new Map<string, number>();
    const after = new Map<string, number>();
    for (const row of rows) {
      row.forEach((c, i) => atPosition.set(`${c}@${i}`, (atPosition.get(`${c}@${i}`) ?? 0) + 1));
      for (let i = 1; i < row.length; i++) after.set(`${row[i - 1]}>${row[i]}`, (after.get(`${row[i - 1]}>${row[i]}`) ?? 0) + 1);
    }
    t.equal(atPosition.size, n * n, `n=${n}: every contender at every position`);
    t.equal(new Set(atPosition.values()).size, 1, `n=${n}: each as often`);
    if (n > 1) {
      t.equal(after.size, n * (n - 1), `n=${n}: every contender right after every other`);
      t.equal(new Set(after.values()).size, 1, `n=${n}: each as often`);
    }
    t.same(balancedOrder(n, cycle), rows[0], `n=${n}: the cycle repeats`);
  }
});

t.test('balancedOrder: three contenders take all six orders, unlike a rotation', async (t) => {
  const rows = Array.from({ length: 6 }, (_, r) => balancedOrder(3, r).join(''));
  t.same([...rows].sort(), ['012', '021', '102', '120', '201', '210']);
  t.same(rows.slice(0, 3), ['012', '120', '201'], 'the first three are the rotation');
});

t.test('balancedOrder: bad arguments are refused', async (t) => {
  t.throws(() => balancedOrder(0, 0), RangeError);
  t.throws(() => balancedOrder(3, -1), RangeError);
  t.throws(() => balancedOrder(2.5, 0), RangeError);
});
