import t, { type Test } from 'tap';
import { MAX_DEPTH, parseJsonBytes } from '../../src/protocols/oip/json-bytes.js';

/** Both parsers on one text: the same value (Object.is on every leaf, -0 included), or both a SyntaxError. */
function agree(t: Test, text: string, name = JSON.stringify(text).slice(0, 60)): void {
  let expected: unknown;
  let expectedError: unknown;
  try {
    expected = JSON.parse(text);
  } catch (err) {
    expectedError = err;
  }
  let got: unknown;
  let gotError: unknown;
  try {
    got = parseJsonBytes(Buffer.from(text, 'utf8'));
  } catch (err) {
    gotError = err;
  }
  if (expectedError !== undefined) {
    t.type(gotError, SyntaxError, `${name}: refused as JSON.parse refuses it`);
    return;
  }
  t.equal(gotError, undefined, `${name}: parsed`);
  t.ok(sameValue(got, expected), `${name}: the value JSON.parse gives`);
}

function sameValue(a: unknown, b: unknown): boolean {
  if (typeof a !== 'object' || a === null || typeof b !== 'object' || b === null) return Object.is(a, b);
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

t.test('numbers are the doubles JSON.parse reads, on the fast path and off it', async (t) => {
  const texts = [
    '0', '-0', '0.0', '-0.0e5', '1', '-1', '0.5', '0.1', '0.3', '123456789012345', '1234567890123456', '12345678901234567890',
    '9007199254740993', '1e22', '1e23', '9.999999999999999e22', '1.7976931348623157e308', '1e309', '-1e309', '5e-324',
    '2e-324', '1e-400', '-1e-400', '0.000001234', '1E+2', '1e-2', '3.14159265358979323846', '0.1e1', '100e-2', '4.35',
    '123.456e-7', '1e0', '0e0', '0.0000000000000000000000001',
  ];
  for (const n of texts) agree(t, n);
  // Random doubles, written as JavaScript writes them (17 digits and fewer), and short decimals.
  let seed = 18;
  const random = (): number => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const many: string[] = [];
  for (let i = 0; i < 5000; i++) {
    const x = (random() - 0.5) * 10 ** Math.floor(random() * 40 - 20);
    many.push(String(x), x.toFixed(Math.floor(random() * 8)), x.toExponential(Math.floor(random() * 20)));
  }
  const text = `[${many.join(',')}]`;
  const got = parseJsonBytes(Buffer.from(text)) as number[];
  const expected = JSON.parse(text) as number[];
  t.equal(got.length, expected.length);
  const wrong = got.filter((v, i) => !Object.is(v, expected[i])).length;
  t.equal(wrong, 0, `${many.length} numbers: every one correctly rounded`);
});

t.test('strings, escapes, UTF-8, objects and arrays read as JSON.parse reads them', async (t) => {
  const texts = [
    '""', '"abc"', '"a\\"b"', '"\\\\"', '"\\n\\t\\r\\b\\f\\/"', '"\\u00e9\\u4e2d"', '"\\ud83d\\ude00"', '"\\ud800"', '"é中😀"',
    '[]', '[ ]', '{}', '{ }', '[1,[2,[3,{}]]]', '{"a":1,"b":[true,false,null],"c":{"d":"e"}}', ' \t\r\n[1] \n',
    '{"a":1,"a":2}', '{"__proto__":{"x":1}}', '{"constructor":1,"toString":"x"}', 'true', 'false', 'null', '"\\u0000"',
    '{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[0.5,1.5]}]}',
  ];
  for (const text of texts) agree(t, text);
  const proto = parseJsonBytes(Buffer.from('{"__proto__":{"polluted":true}}')) as Record<string, unknown>;
  t.equal(Object.getPrototypeOf(proto), Object.prototype, '"__proto__" does not set the prototype');
  t.ok(Object.hasOwn(proto, '__proto__'), 'it is an own property, as JSON.parse makes it');
  t.equal(parseJsonBytes(Buffer.from('xx[1,2]yy'), 2, 7)?.toString(), '1,2', 'a range of the bytes');
});

t.test('every malformed text is a SyntaxError, as JSON.parse says', async (t) => {
  const texts = [
    '', ' ', '[', ']', '{', '[1,]', '[,1]', '{"a":1,}', '{"a"}', '{"a" 1}', '{a:1}', "{'a':1}", '[1 2]', '01', '-', '-a', '1.', '.5', '+1',
    '1e', '1e+', '0x10', 'NaN', 'Infinity', 'tru', 'nul', 'truex', '"abc', '"a\nb"', '"\\x"', '"\\u12"', '[1]x', '[1]]', '{"a":1}}',
    '\ufeff[1]', '"\\', '[-]', '[1e5.0]', '[00]', '{"a":1 "b":2}',
  ];
  for (const text of texts) agree(t, text);
  // Invalid UTF-8 inside a string reads as U+FFFD, as the decoded text does.
  const bad = Buffer.from([0x22, 0x61, 0xff, 0x62, 0x22]);
  t.equal(parseJsonBytes(bad), JSON.parse(bad.toString('utf8')));
});

t.test(`nesting deeper than ${MAX_DEPTH} is refused, not a stack overflow`, async (t) => {
  t.same(parseJsonBytes(Buffer.from(`${'['.repeat(MAX_DEPTH)}${']'.repeat(MAX_DEPTH)}`)), JSON.parse(`${'['.repeat(MAX_DEPTH)}${']'.repeat(MAX_DEPTH)}`));
  t.throws(() => parseJsonBytes(Buffer.from(`${'['.repeat(MAX_DEPTH + 1)}${']'.repeat(MAX_DEPTH + 1)}`)), SyntaxError);
  t.throws(() => parseJsonBytes(Buffer.from('{"a":'.repeat(100_000))), SyntaxError);
});
