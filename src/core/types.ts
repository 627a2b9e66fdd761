/**
 * Contracts shared by the framework-free core: what preprocessing hands the runner, and what the runner returns.
 */

/** One image ready for a model: 8-bit interleaved RGB at the tensor's spatial size (letterbox padding included). */
export interface PreparedPixels {
  /** width * height * 3 bytes, RGB. Owned by the caller until handed to the runner, which copies it. */
  pixels: Uint8Array;
  width: number;
  height: number;
}

/**
 * Where the tensor came from in the original (EXIF-upright) image: tensor = original * scale + offset, per axis.
 * Detection uses it to put boxes back into original-image pixels.
 */
export interface ImageTransform {
  originalWidth: number;
  originalHeight: number;
  scaleX: number;
  scaleY: number;
  offsetX: number;
  offsetY: number;
}

export interface PreparedImage extends PreparedPixels {
  transform: ImageTransform;
}

/** The native element array of an output whose onnxruntime type is not float32 (float16 travels as its bits). */
export type ExactData =
  | Float64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array;

/** An output's elements in the model's own type: `type` is onnxruntime's name for it ('int64', 'bool', ...). */
export interface ExactTensor {
  type: string;
  data: ExactData;
}

/**
 * An output tensor of one batch item, or of a whole batch. `data` is always float32 (what the image tasks read);
 * an output of any other type also carries its exact elements in `exact`, same length and layout as `data`, for
 * the v2 API, which answers in the model's datatype (an int64 above 2^24 does not survive float32).
 */
export interface OutputTensor {
  data: Float32Array;
  dims: number[];
  exact?: ExactTensor;
}

export type Outputs = Record<string, OutputTensor>;

/** Metadata of one model input or output, read from the session. Dynamic dimensions are -1. */
export interface TensorMeta {
  name: string;
  type: string;
  /** Dimensions; -1 where dynamic (symbolic or unknown). */
  shape: number[];
  /** Symbolic names where the model gives them (same length as shape; '' for fixed dims). */
  symbolicShape: string[];
}
