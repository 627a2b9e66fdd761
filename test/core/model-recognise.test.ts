/**
 * What Ocular recognises in a model (src/core/model-recognise.ts) from the ONNX file itself (src/core/onnx-summary.ts):
 * tiny hand-built models with the shapes and metadata of real exports, each head and each unsupported kind.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import {
  parseMetadataNames,
  parseMetadataSize,
  recogniseModel,
  rejectUnsupportedExport,
  type Recognition,
} from '../../src/core/model-recognise.js';
import { ModelCheckError } from '../../src/core/model-check.js';
import { readOnnxHeader, summarizeOnnx } from '../../src/core/onnx-summary.js';
import { WireError } from '../../src/core/onnx-wire.js';
import { encodeExport, EXPORTS, type ExportShape } from '../helpers/export-shapes.js';

function recognise(shape: ExportShape): Recognition {
  const s = summarizeOnnx(encodeExport(shape));
  return recogniseModel({ inputs: s.inputs, outputs: s.outputs, metadata: s.metadata, ops: s.ops });
}

t.test('each detection export is recognised with its head, class count and confidence', async (t) => {
  const cases: [keyof typeof EXPORTS, string, Recognition['confidence'], number | undefined][] = [
    ['ultralytics', 'ultralytics', 'high', 80],
    ['ultralyticsTransposed', 'ultralytics', 'high', 80],
    ['yolov5', 'yolov5', 'high', 80],
    ['end2end', 'end2end', 'high', undefined],
    ['tfDetection', 'boxes-scores-classes', 'high', undefined],
    ['torchvisionDetection', 'boxes-scores-classes', 'high', undefined],
    ['detr', 'detr', 'medium', 80],
    ['detrTwoOutputs', 'detr', 'high', 92],
  ];
  for (const [name, head, confidence, classes] of cases) {
    const r = recognise(EXPORTS[name]);
    t.equal(r.kind, 'object-detection', `${name}: ${r.reasons.join('; ')}`);
    t.equal(r.head?.type, head, `${name}: head`);
    t.equal(r.confidence, confidence, `${name}: confidence`);
    t.equal(r.classes, classes, `${name}: classes`);
    t.ok(r.supported, `${name}: supported`);
  }
  t.equal(recognise(EXPORTS.ultralytics).head?.anchorsLast, true);
  t.equal(recognise(EXPORTS.ultralyticsTransposed).head?.anchorsLast, false);
  t.same(recognise(EXPORTS.tfDetection).head?.outputs, {
    boxes: 'detection_boxes',
    scores: 'detection_scores',
    classes: 'detection_classes',
    numDetections: 'num_detections',
  });
  t.same(recognise(EXPORTS.detrTwoOutputs).head?.outputs, { boxes: 'pred_boxes', logits: 'logits' });
  t.match(recognise(EXPORTS.end2end).reasons.join(), /NonMaxSuppression node seen/);
});

t.test('the image input: layout, batch dimension, size from the model or from the metadata, type', async (t) => {
  t.same(recognise(EXPORTS.ultralytics).input, {
    name: 'images',
    type: 'float32',
    layout: 'NCHW',
    batch: 1,
    width: 640,
    height: 640,
    sizeFrom: 'model',
    layoutKnown: true,
  });
  const tf = recognise(EXPORTS.tfDetection).input;
  t.same([tf?.type, tf?.layout, tf?.batch, tf?.width, tf?.sizeFrom], ['uint8', 'NHWC', 1, undefined, undefined]);
  const tv = recognise(EXPORTS.torchvisionDetection).input;
  t.same([tv?.layout, tv?.batch], ['NCHW', 'none'], 'a rank-3 input has no batch dimension');
  const dynamic = recognise({
    inputs: [{ name: 'images', type: 'float16', dims: ['batch', 3, 'height', 'width'] }],
    outputs: [{ name: 'output0', dims: ['batch', 84, 'anchors'] }],
    metadata: { imgsz: '[480, 640]', names: "{0: 'a'}" },
  });
  t.same([dynamic.input?.height, dynamic.input?.width, dynamic.input?.sizeFrom, dynamic.input?.type], [480, 640, 'metadata', 'float16']);
  t.same(dynamic.labels, ['a']);
});

t.test('instance segmentation, pose and oriented boxes are recognised and not supported', async (t) => {
  const cases: [keyof typeof EXPORTS, Recognition['kind'], Recognition['confidence']][] = [
    ['seg', 'instance-segmentation', 'high'],
    ['segNoMetadata', 'instance-segmentation', 'medium'],
    ['pose', 'pose', 'high'],
    ['obb', 'oriented-detection', 'high'],
  ];
  for (const [name, kind, confidence] of cases) {
    const r = recognise(EXPORTS[name]);
    t.equal(r.kind, kind, `${name}: ${r.reasons.join('; ')}`);
    t.equal(r.confidence, confidence, `${name}: confidence`);
    t.notOk(r.supported, `${name}: not supported`);
  }
  t.match(recognise(EXPORTS.segNoMetadata).reasons.join(), /32 mask prototypes/);
  const maskRcnn = recognise({
    inputs: [{ name: 'images', dims: [3, 'h', 'w'] }],
    outputs: [
      { name: 'boxes', dims: ['K', 4] },
      { name: 'labels', type: 'int64', dims: ['K'] },
      { name: 'scores', dims: ['K'] },
      { name: 'masks', dims: ['K', 1, 'h', 'w'] },
    ],
  });
  t.equal(maskRcnn.kind, 'instance-segmentation', 'a masks output beside the boxes');
  // Pose's 56 rows without metadata read as a detector of 52 classes, with the warning.
  const { metadata: _, ...poseShapesOnly } = EXPORTS.pose;
  const bare = recognise(poseShapesOnly);
  t.same([bare.kind, bare.head?.type, bare.supported], ['object-detection', 'ultralytics', true]);
  t.match(bare.reasons.join(), /56 rows is also YOLOv8-pose/);
});

t.test('startup refuses what it recognises as unsupported, naming it; a low-confidence guess refuses nothing', async (t) => {
  const facts = (shape: ExportShape) => {
    const s = summarizeOnnx(encodeExport(shape));
    return { inputs: s.inputs, outputs: s.outputs, metadata: s.metadata };
  };
  t.throws(() => rejectUnsupportedExport('m', 'source', facts(EXPORTS.segNoMetadata)), ModelCheckError);
  t.throws(() => rejectUnsupportedExport('m', 'source', facts(EXPORTS.seg)), /model "m": source: this looks like an instance segmentation export \(metadata task is "segment".*which Ocular does not serve/);
  t.throws(() => rejectUnsupportedExport('m', 'source', facts(EXPORTS.pose)), /a pose \(keypoint\) export/);
  t.throws(() => rejectUnsupportedExport('m', 'source', facts(EXPORTS.obb)), /an oriented-box \(OBB\) export/);
  for (const name of ['ultralytics', 'yolov5', 'end2end', 'tfDetection', 'detrTwoOutputs'] as const) {
    t.doesNotThrow(() => rejectUnsupportedExport('m', 'source', facts(EXPORTS[name])), name);
  }
});

t.test('classification, segmentation and OCR shapes', async (t) => {
  const img = { name: 'input', dims: ['N', 3, 224, 224] };
  const cls = recognise({ inputs: [img], outputs: [{ name: 'logits', dims: ['N', 1000] }] });
  t.same([cls.kind, cls.classes, cls.confidence], ['image-classification', 1000, 'high']);
  const seg = recognise({ inputs: [{ name: 'input', dims: ['N', 3, 520, 520] }], outputs: [{ name: 'out', dims: ['N', 21, 520, 520] }] });
  t.same([seg.kind, seg.outputLayout, seg.classes, seg.confidence], ['semantic-segmentation', 'NCHW', 21, 'high']);
  const map = recognise({ inputs: [img], outputs: [{ name: 'classes', type: 'int64', dims: ['N', 224, 224] }] });
  t.same([map.kind, map.outputLayout], ['semantic-segmentation', 'class-map']);
  const det = recognise({ inputs: [{ name: 'x', dims: ['N', 3, 'H', 'W'] }], outputs: [{ name: 'maps', dims: ['N', 1, 'H', 'W'] }] });
  t.same([det.kind, det.confidence], ['ocr-detection', 'medium']);
  const rec = recognise({ inputs: [{ name: 'x', dims: ['N', 3, 48, 'W'] }], outputs: [{ name: 'probs', dims: ['N', 'T', 97] }] });
  t.same([rec.kind, rec.classes], ['ocr-recognition', 97]);
  const odd = recognise({ inputs: [img], outputs: [{ name: 'a', dims: ['N', 3] }, { name: 'b', dims: ['N', 7, 7] }] });
  t.same([odd.kind, odd.confidence], ['unknown', 'low']);
});

t.test("Ultralytics' names and imgsz metadata", async (t) => {
  t.same(parseMetadataNames("{0: 'person', 1: 'bicycle', 2: \"teddy's bear\"}"), ['person', 'bicycle', "teddy's bear"]);
  t.same(parseMetadataNames("{0: 'it\\'s'}"), ["it's"]);
  t.same(parseMetadataNames('["a", "b"]'), ['a', 'b']);
  t.same(parseMetadataNames('{"1": "b", "0": "a"}'), ['a', 'b']);
  t.equal(parseMetadataNames("{0: 'a', 2: 'c'}"), undefined, 'indices must be 0..n-1');
  t.equal(parseMetadataNames("{0: 'a', 0: 'b'}"), undefined, 'no repeated index');
  t.equal(parseMetadataNames("{0: 'a' 1: 'b'}"), undefined, 'no missing comma');
  t.equal(parseMetadataNames('person, bicycle'), undefined);
  t.equal(parseMetadataNames('{}'), undefined);
  t.same(parseMetadataSize('[480, 640]'), [480, 640]);
  t.same(parseMetadataSize('320'), [320, 320]);
  t.equal(parseMetadataSize('[0, 640]'), undefined);
  t.equal(parseMetadataSize('[1, 2, 3]'), undefined);
});

t.test('the header read from the file (graph skipped) equals the whole model read', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-recognise-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bytes = encodeExport(EXPORTS.pose);
  await writeFile(join(dir, 'pose.onnx'), bytes);
  const header = await readOnnxHeader(join(dir, 'pose.onnx'));
  const { inputs: _i, outputs: _o, ops: _p, initializers: _n, ...whole } = summarizeOnnx(bytes);
  t.same(header, whole);
  t.equal(header.metadata['task'], 'pose');
  t.same(header.opsets, { '': 13 });
  await writeFile(join(dir, 'cut.onnx'), bytes.subarray(0, bytes.length - 3));
  await t.rejects(readOnnxHeader(join(dir, 'cut.onnx')), WireError, 'a file cut short is refused');
  t.throws(() => summarizeOnnx(Buffer.from('not a model at all')), WireError);
});
