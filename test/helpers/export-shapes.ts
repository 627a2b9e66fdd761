/**
 * Tiny ONNX models with the inputs, outputs and metadata of real exports (Ultralytics detect/seg/pose/obb, YOLOv5,
 * YOLOv10, DETR, TensorFlow and torchvision detection, ...), written with onnx-proto's encoder. Each output is the
 * image's mean broadcast to the output's shape, so the model runs (onnxruntime loads it, the server's warm-up
 * passes) while its shapes are those of the export it stands for: what models:inspect and the startup check read.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

/** A dimension: a size, or a symbolic name (run as 1; the first dim of an output follows the input's batch). */
export type Dim = number | string;

export interface TensorSpec {
  name: string;
  /** onnxruntime type name: float32, float16, uint8, int64, int32. */
  type?: string;
  dims: Dim[];
}

export interface ExportShape {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  metadata?: Record<string, string>;
  producer?: string;
  /** Operator types to add as nodes off the outputs' path (an export's NonMaxSuppression): read, never run. */
  extraOps?: string[];
}

const ELEM: Record<string, number> = { float32: 1, uint8: 2, int32: 6, int64: 7, float16: 10 };

function elemOf(type: string | undefined): number {
  const e = ELEM[type ?? 'float32'];
  if (e === undefined) throw new Error(`type ${type} not supported by the fixture builder`);
  return e;
}

function valueInfo(t: TensorSpec) {
  return {
    name: t.name,
    type: { tensorType: { elemType: elemOf(t.type), shape: { dim: t.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function int64Initializer(name: string, values: number[]) {
  const raw = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => raw.writeBigInt64LE(BigInt(v), i * 8));
  return { name, dataType: 7, dims: [values.length], rawData: raw };
}

/** Encodes the model (opset 13). The first input is the image: its mean per batch item feeds every output. */
export function encodeExport(spec: ExportShape): Buffer {
  const image = spec.inputs[0];
  if (image === undefined) throw new Error('an export needs an input');
  const rank = image.dims.length;
  const nodes: onnxProto.onnx.INodeProto[] = [];
  const initializer: ReturnType<typeof int64Initializer>[] = [];
  nodes.push({ opType: 'Cast', input: [image.name], output: ['fx/float'], name: 'cast', attribute: [{ name: 'to', type: 2, i: 1 }] });
  const axes = Array.from({ length: rank - 1 }, (_, i) => i + 1);
  nodes.push({ opType: 'ReduceMean', input: ['fx/float'], output: ['fx/mean'], name: 'mean', attribute: [{ name: 'axes', type: 7, ints: axes }, { name: 'keepdims', type: 2, i: 1 }] });
  spec.outputs.forEach((out, k) => {
    const r = out.dims.length;
    initializer.push(int64Initializer(`fx/rank${k}`, [0, ...Array<number>(Math.max(0, r - 1)).fill(1)].slice(0, Math.max(r, 1))));
    initializer.push(int64Initializer(`fx/shape${k}`, out.dims.map((d, i) => (i === 0 || typeof d === 'string' ? 1 : d))));
    nodes.push({ opType: 'Reshape', input: ['fx/mean', `fx/rank${k}`], output: [`fx/r${k}`], name: `reshape${k}` });
    const expanded = out.type === undefined || out.type === 'float32' ? out.name : `fx/e${k}`;
    nodes.push({ opType: 'Expand', input: [`fx/r${k}`, `fx/shape${k}`], output: [expanded], name: `expand${k}` });
    if (expanded !== out.name) {
      nodes.push({ opType: 'Cast', input: [expanded], output: [out.name], name: `cast${k}`, attribute: [{ name: 'to', type: 2, i: elemOf(out.type) }] });
    }
  });
  (spec.extraOps ?? []).forEach((op, i) => nodes.push({ opType: op, input: [], output: [`fx/extra${i}`], name: `extra${i}` }));
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: spec.producer ?? 'ocular-tests',
    opsetImport: [{ domain: '', version: 13 }],
    metadataProps: Object.entries(spec.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph: { name: 'export', node: nodes, initializer, input: spec.inputs.map(valueInfo), output: spec.outputs.map(valueInfo) },
  });
  return Buffer.from(onnx.ModelProto.encode(model).finish());
}

/** COCO's 80 names as Ultralytics writes them into metadata_props (`str(dict)`). */
export function ultralyticsNames(count = 80): string {
  return `{${Array.from({ length: count }, (_, i) => `${i}: 'class ${i}'`).join(', ')}}`;
}

const image640: TensorSpec = { name: 'images', dims: [1, 3, 640, 640] };
const ultralyticsMeta = (task: string, extra: Record<string, string> = {}): Record<string, string> => ({
  description: `Ultralytics YOLO11n-${task} model`,
  author: 'Ultralytics',
  task,
  stride: '32',
  batch: '1',
  imgsz: '[640, 640]',
  names: ultralyticsNames(task === 'obb' ? 15 : task === 'pose' ? 1 : 80),
  ...extra,
});

/** The real exports' shapes (batch 1, 640x640 unless said), by the head or kind they stand for. */
export const EXPORTS = {
  /** Ultralytics YOLOv8/11 detect: [1, 4+80, 8400]. */
  ultralytics: { inputs: [image640], outputs: [{ name: 'output0', dims: [1, 84, 8400] }], metadata: ultralyticsMeta('detect'), producer: 'pytorch' },
  /** The same transposed, [1, 8400, 84], without metadata but its names. */
  ultralyticsTransposed: { inputs: [image640], outputs: [{ name: 'output0', dims: [1, 8400, 84] }], metadata: { names: ultralyticsNames() } },
  /** YOLOv5: [1, 25200, 85], 3 anchors per cell. */
  yolov5: { inputs: [image640], outputs: [{ name: 'output0', dims: [1, 25200, 85] }] },
  /** YOLOv10 / Ultralytics nms=True: [1, 300, 6]. */
  end2end: { inputs: [image640], outputs: [{ name: 'output0', dims: [1, 300, 6] }], extraOps: ['NonMaxSuppression'] },
  /** TensorFlow Object Detection API: uint8 NHWC of any size, four outputs. */
  tfDetection: {
    inputs: [{ name: 'input_tensor', type: 'uint8', dims: [1, 'height', 'width', 3] }],
    outputs: [
      { name: 'detection_boxes', dims: [1, 100, 4] },
      { name: 'detection_scores', dims: [1, 100] },
      { name: 'detection_classes', dims: [1, 100] },
      { name: 'num_detections', dims: [1] },
    ],
  },
  /** torchvision Faster R-CNN: [3, H, W] without a batch, boxes/labels/scores of K rows. */
  torchvisionDetection: {
    inputs: [{ name: 'images', dims: [3, 'height', 'width'] }],
    outputs: [
      { name: 'boxes', dims: ['K', 4] },
      { name: 'labels', type: 'int64', dims: ['K'] },
      { name: 'scores', dims: ['K'] },
    ],
  },
  /** RT-DETR (Ultralytics export): [1, 300, 4+80]. */
  detr: { inputs: [image640], outputs: [{ name: 'output0', dims: [1, 300, 84] }] },
  /** DETR (Hugging Face export): logits [1, 100, 92] and pred_boxes [1, 100, 4]. */
  detrTwoOutputs: {
    inputs: [{ name: 'pixel_values', dims: ['batch', 3, 800, 800] }],
    outputs: [
      { name: 'logits', dims: ['batch', 100, 92] },
      { name: 'pred_boxes', dims: ['batch', 100, 4] },
    ],
  },
  /** Ultralytics seg: [1, 4+80+32, 8400] and the prototypes [1, 32, 160, 160]; no metadata (shapes alone). */
  segNoMetadata: {
    inputs: [image640],
    outputs: [
      { name: 'output0', dims: [1, 116, 8400] },
      { name: 'output1', dims: [1, 32, 160, 160] },
    ],
  },
  /** The same with Ultralytics' metadata. */
  seg: {
    inputs: [image640],
    outputs: [
      { name: 'output0', dims: [1, 116, 8400] },
      { name: 'output1', dims: [1, 32, 160, 160] },
    ],
    metadata: ultralyticsMeta('segment'),
  },
  /** Ultralytics pose: [1, 4+1+17*3, 8400], kpt_shape [17, 3]. */
  pose: { inputs: [image640], outputs: [{ name: 'output0', dims: [1, 56, 8400] }], metadata: ultralyticsMeta('pose', { kpt_shape: '[17, 3]' }) },
  /** Ultralytics obb (DOTA, 15 classes, 1024x1024): [1, 4+15+1, 21504]. */
  obb: {
    inputs: [{ name: 'images', dims: [1, 3, 1024, 1024] }],
    outputs: [{ name: 'output0', dims: [1, 20, 21504] }],
    metadata: { ...ultralyticsMeta('obb'), imgsz: '[1024, 1024]' },
  },
} satisfies Record<string, ExportShape>;
