/**
 * Whether sessions ask onnxruntime for exact int8 matrix products (`session.x64quantprecision`).
 *
 * On x86, onnxruntime multiplies uint8 activations by int8 weights (u8s8). Without VNNI its kernels sum each pair
 * of neighbouring products with VPMADDUBSW into a saturating int16 (255 × 127 × 2 = 64,770 is clamped to 32,767),
 * so a model quantized without reduce_range computes wrong values: the int8 mobilenetv2 differs from its reference
 * logits by up to 9 and changes top-1 class on AVX2-only CPUs. With VNNI (AVX512-VNNI, AVX-VNNI) or AMX the sum is
 * 32-bit and exact. The session option makes onnxruntime convert the int8 weights to uint8 at load and use its
 * u8u8 kernels, which widen to 16 bits before multiplying and never saturate: results then equal a VNNI CPU's, at
 * some speed cost (docs/RELIABILITY.md). It changes nothing for float models.
 *
 * Read on the thread that creates a session pool; pure apart from reading /proc/cpuinfo.
 */
import { readFileSync } from 'node:fs';

/** The session config entry (onnxruntime's kOrtSessionOptionsAvx2PrecisionMode). */
export const EXACT_INT8_CONFIG_KEY = 'session.x64quantprecision';

/** /proc/cpuinfo flags that give onnxruntime a non-saturating u8s8 kernel. */
const EXACT_U8S8_FLAGS = ['avx512_vnni', 'avx_vnni', 'amx_int8'] as const;

export interface Int8Precision {
  /** Whether sessions set EXACT_INT8_CONFIG_KEY. */
  exact: boolean;
  /** Why, in a few words, for the load log and test output. */
  reason: string;
}

/** The CPU flags of the first processor in /proc/cpuinfo text (x86 `flags`), or undefined where there are none. */
export function cpuFlagsOf(cpuinfo: string): Set<string> | undefined {
  const line = /^flags\s*:(.*)$/m.exec(cpuinfo);
  return line?.[1] === undefined ? undefined : new Set(line[1].trim().split(/\s+/));
}

/**
 * The decision for a CPU architecture (process.arch) and its /proc/cpuinfo text (undefined where unreadable).
 * Only x86 has the saturating kernels; there, exact products are asked for unless the flags show VNNI or AMX,
 * including where the flags cannot be read (correct results first).
 */
export function int8PrecisionFor(arch: string, cpuinfo: string | undefined): Int8Precision {
  if (arch !== 'x64' && arch !== 'ia32') return { exact: false, reason: `${arch}: no saturating u8s8 kernels` };
  const flags = cpuinfo === undefined ? undefined : cpuFlagsOf(cpuinfo);
  if (flags === undefined) return { exact: true, reason: 'x86 CPU flags unreadable: assuming no VNNI' };
  const vnni = EXACT_U8S8_FLAGS.filter((f) => flags.has(f));
  if (vnni.length > 0) return { exact: false, reason: `CPU has ${vnni.join(', ')}: u8s8 products are exact` };
  return { exact: true, reason: 'CPU lacks VNNI (avx512_vnni, avx_vnni, amx_int8): u8s8 products would saturate' };
}

/** The decision for this process's CPU. */
export function detectInt8Precision(): Int8Precision {
  let cpuinfo: string | undefined;
  try {
    cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    cpuinfo = undefined;
  }
  return int8PrecisionFor(process.arch, cpuinfo);
}
