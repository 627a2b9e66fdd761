/**
 * Messages between the server and its preprocessing processes (process-pool.ts, process-child.ts), as frames
 * (frames.ts): a JSON header, and the image bytes or pixels as the payload. A child handles hostile image bytes, so
 * the parent treats what it sends back as input from outside: every reply is checked before it is used.
 */
import { z } from 'zod';
import type { InputSpec } from '../../config/input-spec.js';
import type { ErrorCode } from '../../errors.js';
import type { ImageTransform } from '../types.js';
import { IMAGE_FORMATS, type ImageFormat } from '../../config/image-formats.js';
import { limitRound32Size } from './resize-plan.js';

/** The child's settings, in its environment (OCULAR_PREPROCESS_INIT, JSON). */
export const ChildInitSchema = z.object({
  imageFormats: z.array(z.enum(IMAGE_FORMATS)).min(1),
  nice: z.number().int().min(0).max(19).default(0),
});
export type ChildInit = z.infer<typeof ChildInitSchema>;

/** Largest image a child takes (its request payload); the pool prepares a larger body in the server itself. */
export const MAX_REQUEST_BYTES = 2 ** 30;

/** A request's header; its payload is the image's bytes. */
export interface ChildRequest {
  id: number;
  spec: InputSpec;
  limits: { maxInputPixels: number; allowedFormats: ImageFormat[]; maxJpegScans?: number; decodeTimeoutMs?: number };
}

/** A reply's header; an `ok` reply's payload is the pixels (width x height x 3 bytes), any other's is empty. */
export type ChildReply =
  | { ready: true }
  | { id: number; ok: true; width: number; height: number; transform: ImageTransform }
  | { id: number; ok: false; code: ChildErrorCode; detail: string };

/** What prepareImage throws (and INTERNAL for anything else): a child can answer nothing but these. */
export const CHILD_ERROR_CODES = ['UNSUPPORTED_MEDIA_TYPE', 'TOO_MANY_PIXELS', 'IMAGE_TOO_COMPLEX', 'IMAGE_DECODE_FAILED', 'INTERNAL'] as const satisfies readonly ErrorCode[];
export type ChildErrorCode = (typeof CHILD_ERROR_CODES)[number];

const finite = z.number().finite();
/** Sides up to 2^16, as libvips' own limit; the product is checked against the bytes below. */
const side = z.number().int().positive().max(65_536);

const ReplySchema = z.union([
  z.object({ ready: z.literal(true) }),
  z.object({
    id: z.number().int().nonnegative(),
    ok: z.literal(true),
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
  }),
  z.object({
    id: z.number().int().nonnegative(),
    ok: z.literal(false),
    code: z.enum(CHILD_ERROR_CODES),
    detail: z.string().max(2_000),
  }),
]);

/** The reply header, or undefined when it is not one a child sends. */
export function parseChildReply(header: unknown): ChildReply | undefined {
  const parsed = ReplySchema.safeParse(header);
  return parsed.success ? (parsed.data as ChildReply) : undefined;
}

/**
 * Why a reply does not fit the request it answers (undefined when it does): the tensor size the spec gives for the
 * reported original size (the spec's own, or limit-round32's computed one), an original within the pixel limit,
 * positive scales, and exactly width x height x 3 bytes of pixels. A schema-valid reply of another size would fail
 * the whole batch it joined, or make the inference worker grow its batch buffer for good.
 */
export function replyMismatch(
  reply: Extract<ChildReply, { ok: true }>,
  spec: InputSpec,
  maxInputPixels: number,
  payloadLength: number,
): string | undefined {
  const { transform: t } = reply;
  if (t.originalWidth * t.originalHeight > maxInputPixels) return `original ${t.originalWidth}x${t.originalHeight} is over the pixel limit`;
  if (!(t.scaleX > 0 && t.scaleY > 0)) return 'scales must be positive';
  const want =
    spec.resize.mode === 'limit-round32'
      ? limitRound32Size(t.originalWidth, t.originalHeight, spec.resize.limitSideLen, spec.resize.limitType)
      : { width: spec.width, height: spec.height };
  if (reply.width !== want.width || reply.height !== want.height) {
    return `pixels of ${reply.width}x${reply.height} where the spec gives ${want.width}x${want.height}`;
  }
  if (payloadLength !== reply.width * reply.height * 3) return `${payloadLength} bytes of pixels for ${reply.width}x${reply.height}`;
  return undefined;
}
