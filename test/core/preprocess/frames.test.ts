import t from 'tap';
import { FrameReader, MAX_HEADER_BYTES, PREFIX_BYTES, frameHead } from '../../../src/core/preprocess/frames.js';

function frame(header: unknown, payload: Buffer): Buffer {
  return Buffer.concat([frameHead(header, payload.length), payload]);
}

function collect(maxPayload = 1 << 20) {
  const frames: { header: unknown; payload: Buffer }[] = [];
  const errors: Error[] = [];
  const reader = new FrameReader(
    (_header, payloadLength) => (payloadLength <= maxPayload ? undefined : `a payload of ${payloadLength} bytes`),
    (header, payload) => frames.push({ header, payload }),
    (err) => errors.push(err),
  );
  return { frames, errors, reader };
}

const payloads = [Buffer.from('abc'), Buffer.alloc(0), Buffer.from(Array.from({ length: 70_000 }, (_, i) => i % 251))];
const stream = Buffer.concat(payloads.map((p, i) => frame({ id: i, note: 'é✓' }, p)));

t.test('frames come back whole and in order, however the stream is cut', async (t) => {
  for (const size of [1, 2, 3, 7, PREFIX_BYTES, 13, 64, 4096, 65_536, stream.length]) {
    const { frames, errors, reader } = collect();
    for (let at = 0; at < stream.length; at += size) reader.push(stream.subarray(at, at + size));
    t.same(errors, [], `chunks of ${size}: no error`);
    t.same(
      frames.map((f) => f.header),
      payloads.map((_, i) => ({ id: i, note: 'é✓' })),
      `chunks of ${size}: headers`,
    );
    t.ok(frames.every((f, i) => f.payload.equals(payloads[i] as Buffer)), `chunks of ${size}: payloads`);
  }
});

t.test('a payload over the limit, an oversized header or a header that is not JSON is one error, then nothing', async (t) => {
  const over = collect(100);
  over.reader.push(frame({ id: 1 }, Buffer.alloc(101)));
  over.reader.push(frame({ id: 2 }, Buffer.alloc(1)));
  t.equal(over.errors.length, 1);
  t.match(over.errors[0]?.message, /a payload of 101 bytes/, "accept's reason");
  t.same(over.frames, [], 'nothing after the error');

  const bigHeader = collect();
  const head = Buffer.alloc(PREFIX_BYTES);
  head.writeUInt32LE(MAX_HEADER_BYTES + 1, 0);
  bigHeader.reader.push(head);
  t.equal(bigHeader.errors.length, 1);

  const empty = collect();
  empty.reader.push(Buffer.alloc(PREFIX_BYTES));
  t.equal(empty.errors.length, 1, 'a zero-length header is an error');

  const notJson = collect();
  const bad = Buffer.alloc(PREFIX_BYTES + 3);
  bad.writeUInt32LE(3, 0);
  bad.write('{x:', PREFIX_BYTES);
  notJson.reader.push(Buffer.concat([bad, frame({ id: 3 }, Buffer.alloc(0))]));
  t.equal(notJson.errors.length, 1);
  t.match(notJson.errors[0]?.message, /not JSON/);
  t.same(notJson.frames, []);

  const seen: [unknown, number][] = [];
  const refusing = new FrameReader(
    (header, length) => {
      seen.push([header, length]);
      return 'refused';
    },
    () => t.fail('no frame after a refusal'),
    () => {},
  );
  refusing.push(frameHead({ id: 9 }, 2 ** 31));
  t.same(seen, [[{ id: 9 }, 2 ** 31]], 'accept sees the header and the announced length before any payload arrives');

  t.throws(() => frameHead({ big: 'x'.repeat(MAX_HEADER_BYTES) }, 0), RangeError, 'the writer refuses a header over the limit');
});
