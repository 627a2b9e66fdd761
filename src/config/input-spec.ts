import { z } from 'zod';

/**
 * How an image becomes a model input. Everything about preprocessing that differs between models is data here,
 * never code: size, layout, channel order, resize mode, kernel, alpha background, scale, mean, std.
 *
 * A pixel value p (0..255, after resize) becomes x = (p * scale - mean[c]) / std[c], with c in the model's
 * channel order (mean and std are given in that same order as the tensor's channels: for BGR models, B first).
 */
export const ResizeKernelSchema = z.enum(['nearest', 'linear', 'cubic', 'mitchell', 'lanczos2', 'lanczos3']);

export const ResizeSchema = z.discriminatedUnion('mode', [
  /** Whole image to width x height, aspect ratio not kept. */
  z.strictObject({ mode: z.literal('stretch') }),
  /**
   * Scale by r = min(W/w, H/h), resize to (floor(w*r), floor(h*r)), paste onto a W x H canvas filled with padValue,
   * at the top-left corner or centred (offsets floored).
   */
  z.strictObject({
    mode: z.literal('letterbox'),
    anchor: z.enum(['top-left', 'center']).default('center'),
    padValue: z.number().int().min(0).max(255).default(114),
  }),
  /** Resize so the shorter side is shorterSide (aspect kept), then crop the centre width x height. */
  z.strictObject({
    mode: z.literal('shorter-side-center-crop'),
    shorterSide: z.number().int().positive(),
  }),
  /**
   * PaddleOCR DetResizeForTest: if the long (limitType max) or short (min) side is past limitSideLen, scale it to
   * limitSideLen; then round each side to a multiple of 32 with Python's round (halves to even), at least 32.
   * The tensor size is dynamic: width/height in the input spec are then only the nominal warm-up size.
   */
  z.strictObject({
    mode: z.literal('limit-round32'),
    limitSideLen: z.number().int().positive().default(960),
    limitType: z.enum(['max', 'min']).default('max'),
  }),
]);

const Triple = z.tuple([z.number(), z.number(), z.number()]);

export const InputSpecSchema = z.strictObject({
  /** Input tensor name; default: the model's only input. */
  name: z.string().min(1).optional(),
  /** Tensor width and height. For dynamic-size resize modes, the nominal size used for warm-up. */
  width: z.number().int().positive().max(16384),
  height: z.number().int().positive().max(16384),
  layout: z.enum(['NCHW', 'NHWC']).default('NCHW'),
  channelOrder: z.enum(['RGB', 'BGR']).default('RGB'),
  resize: ResizeSchema.default({ mode: 'stretch' }),
  kernel: ResizeKernelSchema.default('linear'),
  /** Colour that transparent pixels are flattened onto, #rrggbb. */
  background: z
    .string()
    .regex(/^#[0-9a-fA-F]{6}$/, 'must be a #rrggbb colour')
    .default('#ffffff'),
  scale: z.number().positive().default(1 / 255),
  mean: Triple.default([0, 0, 0]),
  std: Triple.default([1, 1, 1]).refine((s) => s.every((v) => v !== 0), 'std must not contain 0'),
  /**
   * The model's image input type; default: what the model declares (checked where given). float32 and float16 get
   * the normalisation above (float16 rounded from it in the runner); uint8 gets the pixels as they are, in the layout
   * and channel order above: scale, mean and std do not apply. A model whose input has no batch dimension
   * ([3, H, W] or [H, W, 3]) runs one image at a time.
   */
  dtype: z.enum(['float32', 'float16', 'uint8']).optional(),
  /**
   * Images go to the session as uint8 pixels and the normalisation above (scale, mean, std, layout, channel order)
   * runs inside the model, in a prefix the loader adds to its graph (core/runner/uint8-prefix.ts): 4 times fewer
   * bytes to copy to a GPU, and no normalising loop on the inference thread. 'gpu': where the stage's session runs
   * on a GPU provider (a session that falls back to the CPU gets the float model); 'always'; 'off'. The model's own interface (raw tensors over /v2, /v1/models) stays
   * float32. A stage that pads its items after normalising with a value no pixel gives (the OCR recogniser) keeps
   * float input. Default chosen by measurement: docs/PERFORMANCE.md, "uint8 input".
   */
  uint8Input: z.enum(['gpu', 'always', 'off']).default('gpu'),
}).superRefine((spec, ctx) => {
  if (spec.resize.mode === 'shorter-side-center-crop' && spec.resize.shorterSide < Math.max(spec.width, spec.height)) {
    ctx.addIssue({
      code: 'custom',
      path: ['resize', 'shorterSide'],
      message: `must be at least the crop size (${Math.max(spec.width, spec.height)})`,
    });
  }
});

export type ResizeKernel = z.infer<typeof ResizeKernelSchema>;
export type Resize = z.infer<typeof ResizeSchema>;
export type InputSpec = z.infer<typeof InputSpecSchema>;

/** Tensor dims for `n` images of the input spec's nominal size. */
export function nominalDims(spec: InputSpec, n: number): number[] {
  return spec.layout === 'NCHW' ? [n, 3, spec.height, spec.width] : [n, spec.height, spec.width, 3];
}
