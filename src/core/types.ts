/**
 * Contracts shared by the framework-free core: what preprocessing hands the runner, and what the runner returns.
 */

export type ProviderName = 'tensorrt' | 'cuda' | 'webgpu' | 'cpu';

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

/** A float32 output tensor of one batch item, or of a whole batch. */
export interface OutputTensor {
  data: Float32Array;
  dims: number[];
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
