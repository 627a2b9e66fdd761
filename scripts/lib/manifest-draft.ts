/**
 * A draft manifest entry from what models:inspect recognised (src/core/model-recognise.ts): everything it could
 * infer filled in, and each value it could not infer marked for the user as a string starting with FILL_MARK, which
 * the manifest's schema refuses: an entry with a mark left in fails at startup naming the field, never runs with a
 * guess. Presets fill the preprocessing of the common model families.
 */
import { basename, dirname } from 'node:path';
import type { OnnxSummary } from '../../src/core/onnx-summary.js';
import type { ImageInputGuess, Recognition } from '../../src/core/model-recognise.js';

export const FILL_MARK = 'FILL: ';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

/** Preprocessing of a model family: what its training fed the network. */
export interface Preset {
  description: string;
  channelOrder: 'RGB' | 'BGR';
  scale: number;
  mean: [number, number, number];
  std: [number, number, number];
}

const IMAGENET_MEAN: [number, number, number] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [number, number, number] = [0.229, 0.224, 0.225];

export const PRESETS = {
  imagenet: {
    description: 'ImageNet (torchvision, timm, ONNX Model Zoo classifiers, DeepLab/FCN from torchvision): RGB, x = (p/255 - mean) / std, mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]',
    channelOrder: 'RGB',
    scale: 1 / 255,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
  },
  yolo: {
    description: 'YOLO 0–1 (Ultralytics YOLOv5/v8/v10/11, RT-DETR): RGB, x = p/255, letterbox centred on grey 114',
    channelOrder: 'RGB',
    scale: 1 / 255,
    mean: [0, 0, 0],
    std: [1, 1, 1],
  },
  yolox: {
    description: 'YOLOX (Megvii exports): BGR, x = p (0–255, no scaling), letterbox at the top-left on 114',
    channelOrder: 'BGR',
    scale: 1,
    mean: [0, 0, 0],
    std: [1, 1, 1],
  },
  paddleocr: {
    description: 'PaddleOCR: BGR; detector x = (p/255 - ImageNet mean) / ImageNet std, limit-round32 to 960; recogniser x = (p/255 - 0.5) / 0.5',
    channelOrder: 'BGR',
    scale: 1 / 255,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
  },
  tf: {
    description: 'TensorFlow -1..1 (MobileNet, DeepLab from TF Hub): RGB, x = p/127.5 - 1',
    channelOrder: 'RGB',
    scale: 1 / 127.5,
    mean: [1, 1, 1],
    std: [1, 1, 1],
  },
} as const satisfies Record<string, Preset>;

export type PresetName = keyof typeof PRESETS;

export function isPresetName(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name);
}

const PRESET_HINT = 'presets: imagenet, yolo (YOLO 0–1), yolox, paddleocr, tf (-1..1); `--preset NAME` fills them';

/**
 * The preset the recognised family usually takes: a hint, never applied unasked (a classifier may be ImageNet's or
 * TensorFlow's; only the model's own documentation says).
 */
export function likelyPreset(r: Recognition): PresetName | undefined {
  if (r.kind === 'ocr-detection' || r.kind === 'ocr-recognition') return 'paddleocr';
  if (r.head?.type === 'yolox') return 'yolox';
  if (r.head !== undefined && ['ultralytics', 'yolov5', 'end2end', 'detr'].includes(r.head.type)) return 'yolo';
  if (r.kind === 'semantic-segmentation' && r.input?.layout === 'NHWC') return 'tf';
  if (r.kind === 'image-classification' || r.kind === 'semantic-segmentation') return r.input?.layout === 'NHWC' ? 'tf' : 'imagenet';
  return undefined;
}

export interface DraftOptions {
  /** The model file as the manifest should name it: a path (relative to the manifest's folder) or an https:// URL. */
  source: string;
  sha256: string;
  /** Default: from the file name (its folder's for a file named model.onnx). */
  name?: string;
  preset?: PresetName;
}

export interface Draft {
  entry: JsonObject;
  /** The fields left marked, as dotted paths. */
  toFill: string[];
  /** What the user should know about the entry (labels from metadata, inputs Ocular does not take yet, ...). */
  notes: string[];
}

/** A manifest name from a file path: lowercase, a-z 0-9 . _ -, 1 to 63 characters. */
export function nameFromPath(path: string): string {
  const file = basename(path).replace(/\.onnx$/i, '');
  const stem = file === 'model' || file.startsWith('model_') ? basename(dirname(path)) : file;
  const name = stem.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 63);
  return name === '' ? 'model' : name;
}

class DraftBuilder {
  readonly toFill: string[] = [];
  readonly notes: string[] = [];

  fill(path: string, what: string): string {
    this.toFill.push(path);
    return `${FILL_MARK}${what}`;
  }

  /** The input spec of an image stage: size and layout from the model, the preprocessing from a preset or marked. */
  input(path: string, guess: ImageInputGuess | undefined, role: 'classifier' | 'detector' | 'segmenter' | 'ocr-detector' | 'ocr-recognizer', preset: PresetName | undefined, named: boolean): JsonObject {
    const spec: JsonObject = {};
    if (guess === undefined) {
      return { width: this.fill(`${path}.width`, 'no image input recognised: the input width'), height: this.fill(`${path}.height`, 'the input height') };
    }
    if (named) spec['name'] = guess.name;
    const p = preset === undefined ? undefined : (PRESETS[preset] as Preset);
    if (role === 'ocr-detector') {
      // The detector's tensor size follows each photo; width and height are only the warm-up size.
      spec['width'] = guess.width ?? 640;
      spec['height'] = guess.height ?? 480;
      if (guess.width === undefined) this.notes.push(`${path}.width/height: 640x480 is only the detector's warm-up size (its tensor size follows each photo)`);
    } else if (role === 'ocr-recognizer') {
      spec['width'] = p !== undefined ? 960 : this.fill(`${path}.width`, 'the widest text-line crop in pixels, wider lines are squeezed to it (PaddleOCR: 960)');
      spec['height'] = guess.height ?? this.fill(`${path}.height`, 'the line height in pixels (PaddleOCR: 48)');
    } else {
      spec['width'] = guess.width ?? this.fill(`${path}.width`, 'input width in pixels: the model\'s is dynamic, give the size it was trained at (e.g. 640)');
      spec['height'] = guess.height ?? this.fill(`${path}.height`, 'input height in pixels: the model\'s is dynamic, give the size it was trained at (e.g. 640)');
    }
    spec['layout'] = guess.layout;
    if (!guess.layoutKnown) this.notes.push(`${path}.layout: no dimension of 3 in the input, ${guess.layout} assumed`);
    if (guess.batch === 'none') this.notes.push(`input "${guess.name}" has no batch dimension (rank 3): Ocular runs it at batch 1 where it takes such inputs`);
    if (typeof guess.batch === 'number' && guess.batch > 1) this.notes.push(`input "${guess.name}" fixes its batch at ${guess.batch}: Ocular takes 1 or dynamic`);
    if (guess.type !== 'float32') this.notes.push(`input "${guess.name}" is ${guess.type}: check that your Ocular version takes ${guess.type} image inputs`);
    if (p !== undefined) {
      spec['channelOrder'] = p.channelOrder;
      spec['scale'] = p.scale;
      spec['mean'] = role === 'ocr-recognizer' ? [0.5, 0.5, 0.5] : [...p.mean];
      spec['std'] = role === 'ocr-recognizer' ? [0.5, 0.5, 0.5] : [...p.std];
    } else {
      spec['channelOrder'] = this.fill(`${path}.channelOrder`, `RGB or BGR: the order the model was trained on (ImageNet, YOLO 0–1: RGB; YOLOX, PaddleOCR: BGR); ${PRESET_HINT}`);
      spec['scale'] = this.fill(`${path}.scale`, `x = (p * scale - mean) / std for a pixel p in 0..255 (ImageNet, YOLO 0–1, PaddleOCR: 1/255 = 0.00392156862745098; YOLOX: 1; TF -1..1: 1/127.5)`);
      spec['mean'] = this.fill(`${path}.mean`, `three numbers in the channel order (ImageNet, PaddleOCR det: [0.485, 0.456, 0.406]; YOLO 0–1, YOLOX: [0, 0, 0]; PaddleOCR rec: [0.5, 0.5, 0.5]; TF -1..1: [1, 1, 1])`);
      spec['std'] = this.fill(`${path}.std`, `three numbers (ImageNet, PaddleOCR det: [0.229, 0.224, 0.225]; YOLO 0–1, YOLOX, TF -1..1: [1, 1, 1]; PaddleOCR rec: [0.5, 0.5, 0.5])`);
    }
    const resize = this.resize(path, guess, role, preset);
    if (resize !== undefined) spec['resize'] = resize;
    return spec;
  }

  private resize(path: string, guess: ImageInputGuess, role: string, preset: PresetName | undefined): Json | undefined {
    if (role === 'ocr-recognizer') return undefined;
    if (role === 'ocr-detector') return { mode: 'limit-round32', limitSideLen: 960, limitType: 'max' };
    if (preset === 'yolo') return { mode: 'letterbox', anchor: 'center', padValue: 114 };
    if (preset === 'yolox') return { mode: 'letterbox', anchor: 'top-left', padValue: 114 };
    if (preset === 'imagenet' && role === 'classifier' && guess.width !== undefined && guess.height !== undefined) {
      return { mode: 'shorter-side-center-crop', shorterSide: Math.round((Math.max(guess.width, guess.height) * 256) / 224) };
    }
    if (preset !== undefined) return { mode: 'stretch' };
    return this.fill(
      `${path}.resize`,
      'how the photo becomes the input size: {"mode": "letterbox", "anchor": "center"} (YOLO 0–1; YOLOX: "top-left"), {"mode": "shorter-side-center-crop", "shorterSide": 256} (ImageNet classifiers at 224), or {"mode": "stretch"}',
    );
  }

  labels(path: string, r: Recognition, what: string): Json | undefined {
    if (r.labels !== undefined) {
      this.notes.push(`${path}: left out: the model's metadata names its ${r.labels.length} classes (${r.labels.slice(0, 3).join(', ')}${r.labels.length > 3 ? ', ...' : ''}), which Ocular reads where the manifest gives no labels`);
      return undefined;
    }
    const count = r.classes !== undefined ? `${r.classes} lines` : 'one line per class';
    return this.fill(path, `a labels file (path or https:// URL), ${what}: ${count}`);
  }
}

function setIf(obj: JsonObject, key: string, value: Json | undefined): void {
  if (value !== undefined) obj[key] = value;
}

/** The draft entry for a model. */
export function draftManifestEntry(summary: OnnxSummary, r: Recognition, opts: DraftOptions): Draft {
  const b = new DraftBuilder();
  const name = opts.name ?? nameFromPath(opts.source);
  const named = summary.inputs.length > 1;
  const stage = { source: opts.source, sha256: opts.sha256 };
  const entry: JsonObject = { name, version: '1' };
  if (!r.supported) b.notes.push(`Ocular does not serve ${r.kind} exports: the entry serves the raw tensors (v2 API) only`);
  switch (r.supported ? r.kind : 'unknown') {
    case 'image-classification': {
      Object.assign(entry, { task: 'image-classification', ...stage });
      setIf(entry, 'labels', b.labels('labels', r, 'line i names class i'));
      entry['input'] = b.input('input', r.input, 'classifier', opts.preset, named);
      break;
    }
    case 'object-detection': {
      Object.assign(entry, { task: 'object-detection', ...stage });
      const ssd = r.head?.type === 'ssd';
      setIf(entry, 'labels', b.labels('labels', r, ssd ? 'line i names score column i (background first)' : 'line i names class i'));
      entry['input'] = b.input('input', r.input, 'detector', opts.preset, named);
      entry['head'] = headOf(b, r);
      break;
    }
    case 'semantic-segmentation': {
      Object.assign(entry, { task: 'semantic-segmentation', ...stage });
      setIf(entry, 'labels', b.labels('labels', r, 'line i names class i (background first where the model has one)'));
      entry['input'] = b.input('input', r.input, 'segmenter', opts.preset, named);
      entry['output'] = { layout: r.outputLayout ?? 'NCHW' };
      break;
    }
    case 'ocr-detection':
    case 'ocr-recognition': {
      const own = r.kind === 'ocr-detection' ? 'detector' : 'recognizer';
      const other = own === 'detector' ? 'recognizer' : 'detector';
      entry['task'] = 'ocr';
      const mine: JsonObject = { ...stage, input: b.input(`${own}.input`, r.input, own === 'detector' ? 'ocr-detector' : 'ocr-recognizer', opts.preset, named) };
      if (own === 'recognizer') setIf(mine, 'labels', b.labels('recognizer.labels', r, 'the character dictionary, one character per line (PaddleOCR: ppocr_keys_v1.txt)'));
      entry[own] = mine;
      entry[other] = b.fill(other, `the ${other}'s stage: run models:inspect --manifest on the ${other === 'detector' ? 'text detector (DB)' : 'text-line recogniser (CTC)'} and paste its "${other}" object here`);
      break;
    }
    default: {
      Object.assign(entry, { task: 'tensor', ...stage });
      const dynamic = summary.inputs.filter((i) => i.shape.slice(1).some((d) => d <= 0) || i.shape.length === 0);
      if (dynamic.length > 0) {
        entry['warmupShapes'] = Object.fromEntries(
          dynamic.map((i) => [i.name, b.fill(`warmupShapes.${i.name}`, `the shape of one warm-up input for [${i.shape.join(', ')}], e.g. [1, 3, 640, 640]`)]),
        );
      }
      if (r.kind === 'unknown') b.notes.push('the task was not recognised: the entry serves the raw tensors (v2 API); change task to serve images');
    }
  }
  return { entry, toFill: b.toFill, notes: b.notes };
}

function headOf(b: DraftBuilder, r: Recognition): Json {
  const head = r.head;
  if (head === undefined) return b.fill('head', 'the detection head: yolox, ssd, ultralytics, yolov5, end2end, boxes-scores-classes or detr (see the README, "Your own model")');
  if (head.type === 'yolox') return { type: 'yolox' };
  if (head.type === 'ssd') return { type: 'ssd', scoresOutput: head.outputs['scores'] ?? 'scores', boxesOutput: head.outputs['boxes'] ?? 'boxes' };
  const roles = Object.entries(head.outputs).map(([role, name]) => `${role} "${name}"`);
  b.notes.push(`head ${head.type} reads ${roles.join(', ')}${head.anchorsLast === undefined ? '' : head.anchorsLast ? ' ([N, 4+C, A])' : ' ([N, A, 4+C])'}`);
  return { type: head.type };
}
