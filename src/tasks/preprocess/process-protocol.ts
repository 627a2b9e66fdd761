/**
 * Messages between the server and its preprocessing processes (process-pool.ts, process-child.ts), over Node's IPC
 * channel with the `advanced` serialization (buffers travel as bytes, not JSON). A child handles hostile image bytes,
 * so the parent treats what it sends back as input from outside: every reply is checked before it is used.
 */
import { z } from 'zod';
import type { InputSpec } from '../../config/input-spec.js';
import type { ErrorCode } from '../../errors.js';
import type { ImageTransform } from '../../core/types.js';
import { IMAGE_FORMATS, type ImageFormat } from './image.js';

/** The child's settings, in its environment (OCULAR_PREPROCESS_INIT, JSON). */
export const ChildInitSchema = z.object({
  imageFormats: z.array(z.enum(IMAGE_FORMATS as [ImageFormat, ...ImageFormat[]])).min(1),
  nice: z.number().int().min(0).max(19).default(0),
});
export type ChildInit = z.infer<typeof ChildInitSchema>;

export interface ChildRequest {
  id: number;
  bytes: Uint8Array;
  spec: InputSpec;
  limits: { maxInputPixels: number; allowedFormats: ImageFormat[] };
}

export type ChildReply =
  | { ready: true }
  | { id: number; ok: true; pixels: Uint8Array; width: number; height: number; transform: ImageTransform }
  | { id: number; ok: false; code: ChildErrorCode; detail: string };

/** What prepareImage throws (and INTERNAL for anything else): a child can answer nothing but these. */
export const CHILD_ERROR_CODES = ['UNSUPPORTED_MEDIA_TYPE', 'TOO_MANY_PIXELS', 'IMAGE_DECODE_FAILED', 'INTERNAL'] as const satisfies readonly ErrorCode[];
export type ChildErrorCode = (typeof CHILD_ERROR_CODES)[number];

const finite = z.number().finite();
/** Sides up to 2^16, as libvips' own limit; the product is checked against the bytes below. */
const side = z.number().int().positive().max(65_536);

const ReplySchema = z.union([
  z.object({ ready: z.literal(true) }),
  z
    .object({
      id: z.number().int().nonnegative(),
      ok: z.literal(true),
      pixels: z.instanceof(Uint8Array),
      width: side,
      height: side,
      transform: z.object({
        originalWidth: side,
        originalHeight: side,
        scaleX: finite,
        scaleY: finite,
        offsetX: finite,
        offsetY: finite,
      }),
    })
    .refine((r) => r.pixels.byteLength === r.width * r.height * 3, { message: 'pixels do not hold width x height x 3 bytes' }),
  z.object({
    id: z.number().int().nonnegative(),
    ok: z.literal(false),
    code: z.enum(CHILD_ERROR_CODES),
    detail: z.string().max(2_000),
  }),
]);

/** The reply, or undefined when the message is not one a child sends. */
export function parseChildReply(message: unknown): ChildReply | undefined {
  const parsed = ReplySchema.safeParse(message);
  return parsed.success ? (parsed.data as ChildReply) : undefined;
}
