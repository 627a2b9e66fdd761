/**
 * When sessions ask onnxruntime for exact int8 products (src/core/runner/int8-precision.ts): on x86 unless the CPU
 * has VNNI or AMX, whose u8s8 kernels do not saturate.
 */
import { readFileSync } from 'node:fs';
import t from 'tap';
import { cpuFlagsOf, detectInt8Precision, int8PrecisionFor } from '../../../src/core/runner/int8-precision.js';

/** /proc/cpuinfo of one processor, trimmed to the lines that matter. */
const cpuinfo = (flags: string): string => `processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: ${flags}\nbugs\t\t: sysret_ss_attrs\n\n`;
const ZEN2 = 'fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2 sha_ni';
const ICE_LAKE = `${ZEN2} avx512f avx512bw avx512vl avx512_vnni`;
const ALDER_LAKE = `${ZEN2} avx_vnni`;
const SAPPHIRE_RAPIDS = `${ICE_LAKE} amx_bf16 amx_tile amx_int8`;

t.test('an x86 CPU without VNNI gets exact int8 products, one with VNNI or AMX keeps the u8s8 kernels', async (t) => {
  t.equal(int8PrecisionFor('x64', cpuinfo(ZEN2)).exact, true, 'AVX2 only (EPYC Zen 2)');
  t.equal(int8PrecisionFor('x64', cpuinfo(`${ZEN2} avx512f avx512bw avx512vl`)).exact, true, 'AVX-512 without VNNI (Skylake-SP)');
  t.equal(int8PrecisionFor('ia32', cpuinfo('fpu sse sse2 ssse3 sse4_1')).exact, true, '32-bit x86, SSE4.1');
  t.equal(int8PrecisionFor('x64', cpuinfo(ICE_LAKE)).exact, false, 'AVX512-VNNI');
  t.equal(int8PrecisionFor('x64', cpuinfo(ALDER_LAKE)).exact, false, 'AVX-VNNI');
  t.equal(int8PrecisionFor('x64', cpuinfo(SAPPHIRE_RAPIDS)).exact, false, 'AMX');
  t.match(int8PrecisionFor('x64', cpuinfo(SAPPHIRE_RAPIDS)).reason, /avx512_vnni, amx_int8/, 'the reason names the flags found');
  t.match(int8PrecisionFor('x64', cpuinfo(ZEN2)).reason, /lacks VNNI/);
});

t.test('x86 flags that cannot be read count as no VNNI; other architectures are left alone', async (t) => {
  t.same(int8PrecisionFor('x64', undefined), { exact: true, reason: 'x86 CPU flags unreadable: assuming no VNNI' });
  t.equal(int8PrecisionFor('x64', 'processor\t: 0\n').exact, true, 'no flags line');
  t.equal(int8PrecisionFor('arm64', 'processor\t: 0\nFeatures\t: fp asimd asimddp\n').exact, false, 'arm64');
  t.equal(int8PrecisionFor('arm64', undefined).exact, false, 'arm64, unreadable');
});

t.test('cpuFlagsOf reads the first flags line as whole words', async (t) => {
  const flags = cpuFlagsOf(cpuinfo(ICE_LAKE) + cpuinfo('sse2'));
  t.ok(flags?.has('avx512_vnni'));
  t.notOk(flags?.has('avx512'), 'no prefix matches');
  t.equal(flags?.has('avx2'), true);
  t.equal(cpuFlagsOf('Features\t: fp asimd\n'), undefined);
});

t.test('this machine: the decision agrees with its /proc/cpuinfo', { skip: process.platform === 'linux' ? false : 'no /proc/cpuinfo' }, async (t) => {
  const here = detectInt8Precision();
  t.comment(`this CPU: exact int8 ${here.exact ? 'on' : 'off'} (${here.reason})`);
  t.same(here, int8PrecisionFor(process.arch, readFileSync('/proc/cpuinfo', 'utf8')));
});
