/**
 * ONNX metadata_props (src/core/model-metadata.ts): read from a model written with onnx-proto, Ultralytics' `names`
 * parsed as Python writes it (and refused where it is not an index-to-name map), `imgsz` and `stride`.
 */
import onnxProto from 'onnx-proto';
import t from 'tap';
import { metadataOf, ModelMetadataError, parseClassNames, sizeHintsOf } from '../../src/core/model-metadata.js';
import { encodeModel, FLOAT } from '../v2/helpers.js';

const { onnx } = onnxProto;

function withMetadata(props: Record<string, string>): Uint8Array {
  const model = onnx.ModelProto.decode(encodeModel([{ opType: 'Identity', input: ['x'], output: ['y'] }], [['x', FLOAT, [1]]], [['y', FLOAT, [1]]]));
  model.metadataProps = Object.entries(props).map(([key, value]) => onnx.StringStringEntryProto.create({ key, value }));
  return onnx.ModelProto.encode(model).finish();
}

t.test("a model's metadata_props are read, the graph left alone", async (t) => {
  const props = metadataOf(withMetadata({ names: "{0: 'a', 1: 'b'}", imgsz: '[640, 480]', stride: '32', author: 'Ultralytics' }));
  t.same(Object.fromEntries(props), { names: "{0: 'a', 1: 'b'}", imgsz: '[640, 480]', stride: '32', author: 'Ultralytics' });
  t.same(Object.fromEntries(metadataOf(withMetadata({}))), {}, 'none: an empty map');
  t.throws(() => metadataOf(Buffer.from([0x0a, 0xff])), ModelMetadataError, 'bytes that are no model');
});

t.test("Ultralytics' names: a Python dict literal", async (t) => {
  t.same(parseClassNames("{0: 'person', 1: 'bicycle', 2: 'traffic light'}"), ['person', 'bicycle', 'traffic light']);
  t.same(parseClassNames('{1: "b", 0: "a"}'), ['a', 'b'], 'any order, double quotes');
  t.same(parseClassNames("{0: 'it\\'s', 1: \"say \\\"hi\\\"\", 2: 'back\\\\slash', 3: 'caf\\xe9', 4: '\\u4e2d'}"), ["it's", 'say "hi"', 'back\\slash', 'café', '中'], 'escapes');
  t.same(parseClassNames("{0: 'caf\u00e9 \u4e2d'}"), ['café 中'], 'non-ASCII as it is');
  t.same(parseClassNames("{0: 'a',}"), ['a'], 'a trailing comma');
  t.same(parseClassNames('{}'), [], 'no classes');
  t.same(parseClassNames('{"0": "a", "1": "b"}'), ['a', 'b'], 'a JSON object');
  t.same(parseClassNames('["a", "b"]'), ['a', 'b'], 'a JSON list');
});

t.test('names that are not an index-to-name map are refused, never guessed', async (t) => {
  const bad: [string, RegExp][] = [
    ["{0: 'a', 2: 'c'}", /class 1 is missing/],
    ["{0: 'a', 0: 'b'}", /class 0 given twice/],
    ["{0: 'a'", /expected '}'/],
    ["{0: 'a} ", /unterminated name/],
    ["{'a': 0}", /expected a class index/],
    ["{0: a}", /expected a quoted name/],
    ["{0: 'a'} extra", /text after the closing brace/],
    ["{0: '\\q'}", /unknown escape/],
    ['{"a": "b"}', /not index: name/],
    ['[1, 2]', /not of strings/],
    ['person,bicycle', /expected '\{'/],
  ];
  for (const [text, message] of bad) t.throws(() => parseClassNames(text), { name: 'ModelMetadataError', message }, text);
  t.throws(() => parseClassNames(`{0: '${'x'.repeat(11 * 1024 * 1024)}'}`), /over the limit/, 'a huge text is refused before it is walked');
});

t.test('imgsz and stride', async (t) => {
  t.same(sizeHintsOf(new Map([['imgsz', '[480, 640]'], ['stride', '32']])), { height: 480, width: 640, stride: 32 });
  t.same(sizeHintsOf(new Map([['imgsz', '320']])), { height: 320, width: 320 }, 'one number: square, no stride');
  t.equal(sizeHintsOf(new Map([['stride', '32']])), undefined, 'no imgsz: nothing');
  t.equal(sizeHintsOf(new Map([['imgsz', '[1, 2, 3]']])), undefined, 'not a size: nothing');
});
