import { MessageChannel } from 'node:worker_threads';
import t from 'tap';
import { feedsForTransfer } from '../../../src/core/runner/feeds.js';

/** Posts `value` with `transfer` through a real port and resolves with what the other end received. */
function roundTrip<T>(value: T, transfer: ArrayBuffer[]): Promise<T> {
  const { port1, port2 } = new MessageChannel();
  return new Promise<T>((resolve) => {
    port2.once('message', (m: T) => {
      port1.close();
      resolve(m);
    });
    port1.postMessage(value, transfer);
  });
}

t.test('a feed that is the whole of its buffer is transferred: the other side has the values, the caller an empty array', async (t) => {
  const data = Float32Array.from({ length: 1024 }, (_, i) => i / 2);
  const sent = feedsForTransfer({ x: { data, dims: [1, 1024], type: 'float32' } });
  t.equal(sent.feeds['x']?.data, data, 'the same array, no copy');
  t.same(sent.transfer, [data.buffer]);
  const got = await roundTrip(sent.feeds, sent.transfer);
  t.equal(data.length, 0, 'detached on the sending side');
  t.equal(got['x']?.data[1023], 511.5);
  t.same(got['x']?.dims, [1, 1024]);
});

t.test('a view of part of a larger buffer is copied, its own bytes only, and the larger buffer stays whole', async (t) => {
  const larger = new ArrayBuffer(64 * 1024);
  const view = new Int32Array(larger, 4096, 16).fill(7);
  const small = Buffer.from('abc'); // a view into Node's shared pool slab
  const sent = feedsForTransfer({ a: { data: view, dims: [16], type: 'int32' }, b: { data: small, dims: [3], type: 'uint8' } });
  t.not(sent.feeds['a']?.data, view);
  t.equal(sent.feeds['a']?.data.buffer.byteLength, 64, 'only the view\'s 16 elements');
  t.equal(sent.feeds['b']?.data.buffer.byteLength, 3);
  await roundTrip(sent.feeds, sent.transfer);
  t.equal(larger.byteLength, 64 * 1024, 'the larger buffer is not detached');
  t.same([...view], new Array(16).fill(7));
  t.same(small.toString(), 'abc', 'the pooled Buffer is intact');
});

t.test('a SharedArrayBuffer feed is shared, not listed; one buffer behind two feeds is listed once', async (t) => {
  const shared = new Float32Array(new SharedArrayBuffer(16)).fill(1);
  const twice = new Uint8Array(8).fill(3);
  const sent = feedsForTransfer({
    s: { data: shared, dims: [4], type: 'float32' },
    p: { data: twice, dims: [8], type: 'uint8' },
    q: { data: twice, dims: [8], type: 'uint8' },
  });
  t.equal(sent.feeds['s']?.data, shared);
  t.same(sent.transfer, [twice.buffer], 'the pooled-by-no-one buffer once, the shared one not at all');
  const got = await roundTrip(sent.feeds, sent.transfer);
  t.same([...(got['q']?.data ?? [])], new Array(8).fill(3));
  t.equal(shared[0], 1, 'the shared array stays usable here');
});

t.test('an array already given to a run is not listed again: posting it fails at once instead of crossing unreadable', async (t) => {
  const data = new Float32Array(8).fill(2);
  const first = feedsForTransfer({ x: { data, dims: [8], type: 'float32' } });
  await roundTrip(first.feeds, first.transfer);
  const again = feedsForTransfer({ x: { data, dims: [8], type: 'float32' } });
  t.same(again.transfer, [], 'a detached (empty) buffer is never in a transfer list');
  const { port1 } = new MessageChannel();
  t.throws(() => port1.postMessage(again.feeds, again.transfer), { name: 'DataCloneError' });
  port1.close();
});
