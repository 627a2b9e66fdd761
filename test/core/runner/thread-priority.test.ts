/**
 * Compute threads at a lower priority (src/core/runner/thread-priority.ts): read back from /proc, the kernel's own
 * account of each thread's nice value. Linux only; elsewhere the functions must say why they changed nothing.
 */
import { readdirSync, readFileSync } from 'node:fs';
import sharp from 'sharp';
import t from 'tap';
import { createSessionPool } from '../../../src/core/runner/session-pool.js';
import { currentThreadId, lowerCurrentThread, startThreadRenicer, threadNice } from '../../../src/core/runner/thread-priority.js';
import { normalizeParamsOf } from '../../../src/core/runner/normalize.js';
import { mobilenetV2Spec } from '../../fixtures/input-specs.js';
import { modelPath, sharedTestOptions } from '../../helpers/shared.js';

const linux = process.platform === 'linux';
/** The priority this test process was started at (0 unless started under `nice`). */
const base = linux ? threadNice(process.pid) : undefined;
const lowerable = base !== undefined && base < 5 ? false : 'needs Linux and a test process below nice 5';

/** Every thread of this process: id, name, nice. */
function threads(): { tid: number; name: string; nice: number | undefined }[] {
  return readdirSync('/proc/self/task').map((entry) => {
    const tid = Number(entry);
    let name = '';
    try {
      name = readFileSync(`/proc/self/task/${entry}/comm`, 'utf8').trim();
    } catch {
      // ended meanwhile
    }
    return { tid, name, nice: threadNice(tid) };
  });
}

t.test('the main thread is found and keeps its priority', { skip: linux ? false : 'Linux only' }, async (t) => {
  const tid = currentThreadId();
  t.equal(tid, process.pid, "the main thread's id is the process id");
  t.type(base, 'number', "the main thread's nice value is readable");
});

t.test('a session pool with nice 7 runs its inference threads at 7, the main thread keeps its own', { skip: lowerable === false ? (sharedTestOptions('models/mobilenetv2-12-int8/model.onnx').skip ?? false) : lowerable }, async (t) => {
  t.notOk(threads().some((x) => x.nice === 7), 'no thread at 7 before the pool');
  const warnings: string[] = [];
  const pool = await createSessionPool({
    modelName: 'mobilenet',
    modelPath: modelPath('mobilenetv2-12-int8'),
    providers: ['cpu'],
    fallbackToCpu: false,
    gpuDeviceId: 0,
    instances: 2,
    intraOpNumThreads: 2,
    interOpNumThreads: 1,
    normalize: normalizeParamsOf(mobilenetV2Spec),
    nice: 7,
    logger: { info: () => {}, debug: () => {}, error: () => {}, warn: (_o, msg) => void warnings.push(msg) },
  });
  t.teardown(() => pool.close());
  const out = await pool.runImages({ items: [{ pixels: new Uint8Array(224 * 224 * 3).fill(100), width: 224, height: 224 }], tensorHeight: 224, tensorWidth: 224 });
  t.same(out['output']?.dims, [1, 1000], 'the pool runs');
  const lowered = threads().filter((x) => x.nice === 7);
  // Two worker threads, each with the intra-op thread onnxruntime starts for its second thread.
  t.ok(lowered.length >= 2, `${lowered.length} threads at nice 7 (two workers and their intra-op threads)`);
  t.equal(threadNice(process.pid), base, 'the main thread is untouched');
  t.same(warnings, [], 'no warning');
});

t.test('the renicer lowers every libvips worker, and only those', { skip: lowerable }, async (t) => {
  const image = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#808080' } }).png().toBuffer();
  await Promise.all(Array.from({ length: 8 }, () => sharp(image).resize(32, 32).raw().toBuffer()));
  const vips = (): ReturnType<typeof threads> => threads().filter((x) => x.name === 'libvips worker');
  t.ok(vips().length >= 1, `${vips().length} libvips workers exist`);
  const others = threads().filter((x) => x.name !== 'libvips worker');
  const renicer = startThreadRenicer({ nice: 5, intervalMs: 60_000 });
  t.teardown(() => renicer.stop());
  t.ok(vips().every((x) => x.nice === 5), 'every libvips worker at nice 5 after the first scan');
  t.equal(renicer.scan(), 0, 'a second scan finds nothing left to change');
  for (const o of others) {
    const now = threadNice(o.tid);
    if (now !== undefined) t.equal(now, o.nice, `thread ${o.tid} (${o.name}) keeps its nice value`);
  }
});

t.test('lowerCurrentThread reports why where it cannot act', { skip: linux ? 'the non-Linux path' : false }, async (t) => {
  const result = lowerCurrentThread(5);
  t.equal(result.ok, false);
});
