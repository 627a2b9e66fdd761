import t from 'tap';
import { BodyPool } from '../../src/core/body-pool.js';

t.test('sizes map to power-of-two classes from 64 kB to 1 MB; larger bodies are not pooled', async (t) => {
  const pool = new BodyPool();
  t.equal(pool.capacityFor(0), 64 * 1024);
  t.equal(pool.capacityFor(1), 64 * 1024);
  t.equal(pool.capacityFor(64 * 1024), 64 * 1024);
  t.equal(pool.capacityFor(64 * 1024 + 1), 128 * 1024);
  t.equal(pool.capacityFor(180_000), 256 * 1024);
  t.equal(pool.capacityFor(1024 * 1024), 1024 * 1024);
  t.equal(pool.capacityFor(1024 * 1024 + 1), undefined);
  t.throws(() => new BodyPool({ minBytes: 1000 }), RangeError, 'classes are powers of two');
  t.throws(() => new BodyPool({ minBytes: 1024, maxBytes: 512 }), RangeError);
});

t.test('a released buffer is handed out again; release is idempotent; a buffer is exactly the size asked for', async (t) => {
  const pool = new BodyPool();
  const a = pool.acquire(180_000);
  t.equal(a.buffer.length, 180_000);
  a.buffer.fill(7);
  const b = pool.acquire(200_000);
  t.not(b.buffer.buffer, a.buffer.buffer, 'two live bodies never share memory');
  a.release();
  a.release();
  t.equal(pool.freeBytes, 256 * 1024, 'one buffer of the 256 kB class is free, once');
  const c = pool.acquire(150_000);
  t.equal(c.buffer.buffer, a.buffer.buffer, 'the same class reuses the released memory');
  t.equal(c.buffer.length, 150_000);
  t.equal(pool.freeBytes, 0);
  const d = pool.acquire(150_000);
  t.not(d.buffer.buffer, c.buffer.buffer, 'an empty class allocates');
  b.release();
  c.release();
  d.release();
});

t.test('at most maxFreePerClass buffers are kept per class; bodies past maxBytes are never kept', async (t) => {
  const pool = new BodyPool({ maxFreePerClass: 2 });
  const bodies = Array.from({ length: 5 }, () => pool.acquire(100));
  for (const b of bodies) b.release();
  t.equal(pool.freeBytes, 2 * 64 * 1024);
  const big = pool.acquire(2 * 1024 * 1024);
  t.equal(big.buffer.length, 2 * 1024 * 1024);
  big.release();
  t.equal(pool.freeBytes, 2 * 64 * 1024, 'the unpooled buffer was not kept');
  t.throws(() => pool.acquire(-1), RangeError);
  t.throws(() => pool.acquire(1.5), RangeError);
});

t.test('inUse counts the buffers handed out until each is released; a closed pool keeps none', async (t) => {
  const pool = new BodyPool({ maxBytes: 64 * 1024 });
  const pooled = pool.acquire(1000);
  const large = pool.acquire(100_000);
  t.equal(pool.inUse, 2, 'pooled and unpooled buffers both count');
  pooled.release();
  pooled.release();
  large.release();
  t.equal(pool.inUse, 0, 'each counted back once');
  t.equal(pool.freeBytes, 64 * 1024);
  const late = pool.acquire(1000);
  pool.close();
  t.equal(pool.freeBytes, 0, 'closing drops the free buffers');
  late.release();
  t.equal(pool.inUse, 0);
  t.equal(pool.freeBytes, 0, 'a buffer released after close is not kept');
});
