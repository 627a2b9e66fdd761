/**
 * scripts/gpu-check.sh without a GPU: the configuration file's parsing (scripts/lib/gpu-check-plan.ts), the
 * manifests it writes, and a dry run end to end, which writes every manifest and the summary and starts nothing.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { parseManifest } from '../../src/config/manifest.js';
import { ConfigError, deviceEnv, gpuStats, manifestFor, mergePatch, parseConfigs, vulkanHasGpu } from '../../scripts/lib/gpu-check-plan.js';
import { projectRoot } from '../helpers/shared.js';

t.setTimeout(120_000);
const run = promisify(execFile);
const shippedText = readFileSync(join(projectRoot, 'scripts/gpu-check.configs'), 'utf8');

t.test('the shipped list: OCR on CUDA first, then yolox-nano on CUDA (uint8 on/off, preprocessing off/auto, 16 and 64 connections), webgpu last and only on a Vulkan GPU', async (t) => {
  const configs = parseConfigs(shippedText);
  const first = configs.slice(0, 2);
  t.same(first.map((c) => [c.model, c.device, c.base]), [['ocr', 'cuda', 'default'], ['ocr', 'cuda', 'default']]);
  t.same(first.map((c) => c.patch), [{}, { shapeBuckets: { mode: 'off' } }], 'with buckets (the GPU default) and without: the field named once, in the list');
  const yolox = configs.slice(2, 6);
  t.ok(yolox.every((c) => c.model === 'yolox-nano' && c.device === 'cuda' && c.connections.join() === '16,64'));
  t.same(
    yolox.map((c) => `${(c.patch['input'] as { uint8Input: string }).uint8Input}/${c.preprocess}`).sort(),
    ['always/auto', 'always/off', 'off/auto', 'off/off'],
    'every pair of uint8 input and preprocessing processes',
  );
  const rest = configs.slice(6);
  t.ok(rest.length > 0 && rest.every((c) => c.device === 'webgpu' && c.requires === 'vulkan-gpu'));
});

t.test('malformed lines are refused with their line number', async (t) => {
  const ok = 'a shared yolox-nano cuda 16 auto - {}';
  t.equal(parseConfigs(`# comment\n\n${ok}  # trailing comment\n`).length, 1, 'comments and blank lines skipped');
  const cases: [string, RegExp][] = [
    ['a shared yolox-nano cuda 16 auto -', /line 1: expected 8 fields/],
    ['a shared yolox-nano rocm 16 auto - {}', /line 1: device 'rocm'/],
    ['a elsewhere yolox-nano cuda 16 auto - {}', /base 'elsewhere'/],
    ['a shared yolox-nano cuda 16,x auto - {}', /connections '16,x'/],
    ['a shared yolox-nano cuda 0 auto - {}', /connections '0'/],
    ['a shared yolox-nano cuda 16 many - {}', /preprocess 'many'/],
    ['a shared yolox-nano cuda 16 auto gpu {}', /requires 'gpu'/],
    ['a shared yolox-nano cuda 16 auto - {"input":', /patch is not JSON/],
    ['a shared yolox-nano cuda 16 auto - [1]', /patch must be a JSON object/],
    ['A shared yolox-nano cuda 16 auto - {}', /name 'A'/],
    [`${ok}\n${ok}`, /line 2: name 'a' is used twice/],
    ['# nothing', /no configuration/],
  ];
  for (const [text, message] of cases) t.throws(() => parseConfigs(text), { name: 'ConfigError', message }, text);
  t.ok(new ConfigError('x') instanceof Error);
});

t.test('the patch merges into the entry (objects key by key) and the manifests validate', async (t) => {
  t.same(mergePatch({ a: { b: 1, c: [1, 2] }, d: 1 }, { a: { c: [3] }, e: { f: 2 } }), { a: { b: 1, c: [3] }, d: 1, e: { f: 2 } });
  const [config] = parseConfigs('y shared yolox-nano cuda 16 off - {"input":{"uint8Input":"off"},"batching":{"maxBatchSize":32}}');
  if (config === undefined) throw new Error('no config');
  const fixture = JSON.parse(readFileSync(join(projectRoot, 'test/fixtures/shared.manifest.json'), 'utf8')) as { models: Record<string, unknown>[] };
  const manifest = manifestFor(config, fixture, (p) => `/shared/${p.replace(/^(\.\.\/)+shared\//, '')}`);
  const entry = manifest.models[0] as { source: string; labels: string; input: { uint8Input: string; width: number }; batching: { maxBatchSize: number; maxQueueSize: number } };
  t.equal(entry.source, '/shared/models/yolox-nano/model.onnx', 'paths resolved');
  t.equal(entry.labels, '/shared/models/yolox-nano/labels.txt');
  t.equal(entry.input.uint8Input, 'off');
  t.equal(entry.input.width, 416, 'the rest of the input spec kept');
  t.equal(entry.batching.maxBatchSize, 32);
  t.equal(entry.batching.maxQueueSize, (fixture.models.find((m) => m['name'] === 'yolox-nano')?.['batching'] as { maxQueueSize: number }).maxQueueSize, 'the rest of the batching kept');
  t.doesNotThrow(() => parseManifest(manifest), 'a manifest the server takes');
  t.same(deviceEnv(config), { OCULAR_DEVICE: 'cuda', OCULAR_PREPROCESS_PROCESSES: 'off' });
  t.same(deviceEnv({ ...config, device: 'webgpu' }), { OCULAR_DEVICE: 'webgpu', OCULAR_PREPROCESS_PROCESSES: 'off' }, 'webgpu as users start it: no silent CPU fallback');
  t.throws(() => manifestFor({ ...config, model: 'nope' }, fixture, (p) => p), /no model 'nope'/);
});

t.test('vulkaninfo: a software device is no GPU; nvidia-smi samples summarised', async (t) => {
  const lavapipe = 'GPU0:\n\tapiVersion = 1.4.305\n\tdeviceType = PHYSICAL_DEVICE_TYPE_CPU\n\tdeviceName = llvmpipe (LLVM 19.1.7, 256 bits)\n\tdriverName = llvmpipe';
  const nvidia = 'GPU0:\n\tdeviceType = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU\n\tdeviceName = NVIDIA H200\n\tdriverName = NVIDIA';
  t.equal(vulkanHasGpu(lavapipe), false);
  t.equal(vulkanHasGpu(nvidia), true);
  t.equal(vulkanHasGpu(`${lavapipe}\n${nvidia}`), true);
  t.equal(vulkanHasGpu(''), false);
  t.same(gpuStats('30, 1000\n50, 1200\n\nbad line\n'), { samples: 2, utilMeanPct: 40, utilMaxPct: 50, memMaxMiB: 1200 });
  t.equal(gpuStats(''), undefined);
});

t.test('dry run: every manifest and the summary written, a configuration past the budget skipped, nothing started', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'ocular-gpu-check-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const configs = join(out, 'configs');
  writeFileSync(
    configs,
    [
      'first shared yolox-nano cuda 16,64 auto - {"input":{"uint8Input":"always"}}',
      'second default ocr cuda 16 off - {}',
      'bad shared yolox-nano cuda 16 off - {"noSuchField":1}',
      'last shared yolox-nano webgpu 16 auto vulkan-gpu {}',
    ].join('\n'),
  );
  // Estimates: 30 s per server plus (warm-up + duration + 3) per connection count: 56, 43, (bad), 43 s with DURATION 10.
  const { stdout } = await run(process.execPath, ['--import', 'tsx', join(projectRoot, 'scripts/gpu-check.ts'), join(out, 'run'), '--configs', configs, '--dry-run'], {
    cwd: projectRoot,
    env: { ...process.env, BUDGET_S: '120', DURATION: '10', WARMUP: '0', NVIDIA_SMI: '/nonexistent' },
    timeout: 60_000,
  });
  t.match(stdout, 'gpu-check: 4 configurations');
  t.match(stdout, 'OCULAR_DEVICE=cuda OCULAR_PREPROCESS_PROCESSES=auto', 'the server environment shown');
  const summary = readFileSync(join(out, 'run/summary.md'), 'utf8');
  const status = (name: string) => summary.split('\n').find((l) => l.startsWith(`| ${name} |`))?.split('|')[2]?.trim();
  t.match(status('first'), /^planned/);
  t.match(status('second'), /^planned/);
  t.match(status('bad'), /^failed: manifest: .*noSuchField/, 'an invalid patch caught before any server starts');
  t.match(status('last'), /^skipped: budget/, 'the estimates past BUDGET_S are skipped, in rank order');
  const first = JSON.parse(readFileSync(join(out, 'run/first.manifest.json'), 'utf8')) as { models: { input: { uint8Input: string } }[] };
  t.equal(first.models[0]?.input.uint8Input, 'always');
  const json = JSON.parse(readFileSync(join(out, 'run/summary.json'), 'utf8')) as { dryRun: boolean; results: { name: string }[] };
  t.equal(json.dryRun, true);
  t.same(json.results.map((r) => r.name), ['first', 'second', 'bad', 'last']);
});
