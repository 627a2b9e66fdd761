import { readdirSync, readFileSync } from 'node:fs';
import sharp from 'sharp';
import t from 'tap';
import { OcularError } from '../../../src/errors.js';
import { prepareImage, type DecodeLimits } from '../../../src/core/preprocess/image.js';
import { PreprocessPool, resolvePreprocessProcesses } from '../../../src/core/preprocess/process-pool.js';
import { mobilenetV2Spec, yoloxNanoSpec } from '../../fixtures/input-specs.js';
import { haveShared, sharedPath } from '../../helpers/shared.js';

const limits: DecodeLimits = { maxInputPixels: 40_000_000, allowedFormats: new Set(['jpeg', 'png', 'webp']) };
const FAULTY = new URL('../../fixtures/preprocess-child-faulty.ts', import.meta.url);

function recordingLogger() {
  const lines: { level: string; obj: object; msg: string }[] = [];
  const log = (level: string) => (obj: object, msg: string) => void lines.push({ level, obj, msg });
  return { lines, info: log('info'), error: log('error') };
}

async function rejection(p: Promise<unknown>): Promise<OcularError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof OcularError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

async function until(cond: () => boolean, timeoutMs = 10_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

t.test('resolvePreprocessProcesses', async (t) => {
  t.equal(resolvePreprocessProcesses(3, ['cpu'], 2), 3, 'a number is taken as given');
  t.equal(resolvePreprocessProcesses(0, ['cuda'], 16), 0);
  t.equal(resolvePreprocessProcesses('auto', ['cpu', 'cpu'], 16), 0, 'auto: none on a CPU-only server');
  t.equal(resolvePreprocessProcesses('auto', [], 16), 0, 'auto: none without models');
  t.equal(resolvePreprocessProcesses('auto', ['cpu', 'cuda'], 16), 14, 'auto with a GPU stage: the CPUs less 2');
  t.equal(resolvePreprocessProcesses('auto', ['tensorrt'], 4), 2);
  t.equal(resolvePreprocessProcesses('auto', ['cuda'], 2), 0, 'auto: none below 3 CPUs');
});

t.test('the children prepare every photo exactly as this process does', async (t) => {
  if (!haveShared(t, 'images')) return;
  const dir = sharedPath('images');
  const photos = readdirSync(dir)
    .filter((f) => /\.(jpe?g|png)$/i.test(f))
    .sort();
  t.ok(photos.length >= 10, `${photos.length} photos`);
  const logger = recordingLogger();
  const pool = new PreprocessPool({ processes: 2, imageFormats: ['jpeg', 'png', 'webp'], logger });
  t.teardown(() => pool.close());
  t.ok(await pool.whenReady(), 'both children ready');
  t.equal(pool.stats().ready, 2);
  t.equal(pool.pids().length, 2);
  t.notOk(pool.pids().includes(process.pid), 'children are other processes');
  for (const spec of [yoloxNanoSpec, mobilenetV2Spec]) {
    // All at once: the requests spread over both children, and replies come back out of order.
    const results = await Promise.all(
      photos.map(async (name) => {
        const bytes = readFileSync(`${dir}/${name}`);
        const [child, here] = await Promise.all([pool.prepare(bytes, spec, limits), prepareImage(bytes, spec, limits)]);
        return { name, child, here };
      }),
    );
    for (const { name, child, here } of results) {
      t.same([child.width, child.height], [here.width, here.height], `${name} (${spec.width}x${spec.height}): size`);
      t.same(child.transform, here.transform, `${name}: transform`);
      t.ok(Buffer.from(child.pixels).equals(Buffer.from(here.pixels)), `${name}: the same ${here.pixels.length} bytes`);
    }
  }
  const s = pool.stats();
  t.equal(s.inProcess, 0, 'none fell back to this process');
  t.equal(s.open, 0);
  t.equal(s.exits, 0);
  t.same(logger.lines.filter((l) => l.level === 'error'), []);
});

/** A 640 x 480 JPEG of noise (so that a cut copy is short of data), made here: these tests need no shared files. */
async function noiseJpeg(): Promise<Buffer> {
  const raw = Buffer.alloc(640 * 480 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 2654435761) >>> 24;
  return sharp(raw, { raw: { width: 640, height: 480, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
}

t.test('errors come back with the codes and messages prepareImage gives', async (t) => {
  const pool = new PreprocessPool({ processes: 1, imageFormats: ['jpeg', 'png', 'webp'], logger: recordingLogger() });
  t.teardown(() => pool.close());
  t.ok(await pool.whenReady());
  const jpeg = await noiseJpeg();
  const cases: [string, Buffer, DecodeLimits][] = [
    ['not an image', Buffer.from('certainly not an image'), limits],
    ['a truncated JPEG', jpeg.subarray(0, Math.floor(jpeg.length / 2)), limits],
    ['over the pixel limit', jpeg, { ...limits, maxInputPixels: 10_000 }],
    ['a format this server refuses', jpeg, { ...limits, allowedFormats: new Set(['png']) }],
  ];
  for (const [what, bytes, l] of cases) {
    const child = await rejection(pool.prepare(bytes, yoloxNanoSpec, l));
    const here = await rejection(prepareImage(bytes, yoloxNanoSpec, l));
    t.equal(child.code, here.code, `${what}: ${here.code}`);
    t.equal(child.message, here.message, `${what}: same message`);
  }
  t.equal(pool.stats().inProcess, 0);
  // The child is still there and well after its errors, and its answer is this process's.
  const [ok, here] = await Promise.all([pool.prepare(jpeg, yoloxNanoSpec, limits), prepareImage(jpeg, yoloxNanoSpec, limits)]);
  t.same([ok.width, ok.height], [416, 416]);
  t.ok(Buffer.from(ok.pixels).equals(Buffer.from(here.pixels)), 'the same pixels');
  t.equal(pool.stats().exits, 0);
});

t.test('a child that dies fails only its open request, and is started again', async (t) => {
  process.env.FAULTY_CHILD_MODE = 'exit';
  t.teardown(() => void delete process.env.FAULTY_CHILD_MODE);
  const exits: number[] = [];
  const logger = recordingLogger();
  const pool = new PreprocessPool({
    processes: 1,
    imageFormats: ['png'],
    logger,
    childUrl: FAULTY,
    onUnexpectedExit: () => exits.push(Date.now()),
  });
  t.teardown(() => pool.close());
  t.ok(await pool.whenReady());
  const firstPid = pool.pids()[0];
  const err = await rejection(pool.prepare(Buffer.from('x'), yoloxNanoSpec, limits));
  t.equal(err.code, 'INTERNAL');
  t.match(err.message, /preprocessing process exited \(code 3\)/);
  t.equal(exits.length, 1, 'counted once');
  t.equal(pool.stats().exits, 1);
  t.match(logger.lines.find((l) => l.msg === 'preprocessing process exited')?.obj, { code: 3, lost: 1 });
  // While none is ready, images are prepared here: nothing is refused for want of a child.
  const png = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#336699' } }).png().toBuffer();
  const here = await pool.prepare(png, yoloxNanoSpec, { ...limits, allowedFormats: new Set(['png']) });
  t.equal(here.width, 416, 'prepared in this process meanwhile');
  t.equal(pool.stats().inProcess, 1);
  t.ok(await until(() => pool.stats().ready === 1), 'a new child is ready');
  t.not(pool.pids()[0], firstPid, 'a different process');
});

t.test('a malformed reply ends the child; the request fails with INTERNAL', async (t) => {
  for (const mode of ['garbage', 'foreign-code', 'bad-frame', 'huge-frame', 'wrong-size', 'unknown-id', 'close-replies']) {
    process.env.FAULTY_CHILD_MODE = mode;
    const logger = recordingLogger();
    const pool = new PreprocessPool({ processes: 1, imageFormats: ['png'], logger, childUrl: FAULTY });
    t.ok(await pool.whenReady(), `${mode}: ready`);
    const err = await rejection(pool.prepare(Buffer.from('x'), yoloxNanoSpec, limits));
    t.equal(err.code, 'INTERNAL', `${mode}: INTERNAL, not the child's word`);
    t.match(err.message, /SIGKILL/);
    const why = logger.lines.find((l) => l.msg === 'preprocessing process misbehaved: ending it')?.obj as { why?: string } | undefined;
    t.ok(why, `${mode}: logged`);
    t.notMatch(why?.why ?? '', /unanswered/, `${mode}: ended for what it sent, not at the request timeout`);
    await pool.close();
  }
  delete process.env.FAULTY_CHILD_MODE;
});

t.test('close lets open requests finish, ends the children through their input pipe, and later images are prepared here', async (t) => {
  const logger = recordingLogger();
  const pool = new PreprocessPool({ processes: 2, imageFormats: ['jpeg'], logger });
  t.ok(await pool.whenReady());
  const pids = pool.pids();
  const jpeg = await noiseJpeg();
  const open = Array.from({ length: 6 }, () => pool.prepare(jpeg, yoloxNanoSpec, limits));
  t.equal(pool.stats().open, 6);
  const closed = pool.close();
  const late = await pool.prepare(jpeg, yoloxNanoSpec, limits);
  t.equal(late.width, 416, 'a request after close began is prepared here');
  t.equal(pool.stats().inProcess, 1);
  const done = await Promise.all(open);
  t.equal(done.length, 6, 'every open request answered');
  await closed;
  for (const pid of pids) {
    t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `child ${pid} has exited`);
  }
  const ended = logger.lines.filter((l) => l.msg === 'preprocessing process ended');
  t.same(
    ended.map((l) => l.obj).sort((a, b) => (a as { pid: number }).pid - (b as { pid: number }).pid),
    pids.sort((a, b) => a - b).map((pid) => ({ pid, code: 0, signal: null })),
    'each child exited 0 on its own (not killed) once its input closed',
  );
  t.equal(pool.stats().exits, 0, 'an exit asked for is not counted');
});

t.test('children ignore SIGTERM and SIGINT: the server, which drains first, ends them', async (t) => {
  const pool = new PreprocessPool({ processes: 1, imageFormats: ['jpeg'], logger: recordingLogger() });
  t.teardown(() => pool.close());
  t.ok(await pool.whenReady());
  const [pid] = pool.pids();
  process.kill(pid as number, 'SIGTERM');
  process.kill(pid as number, 'SIGINT');
  const image = await pool.prepare(await noiseJpeg(), yoloxNanoSpec, limits);
  t.equal(image.width, 416);
  t.same(pool.pids(), [pid], 'the same child answered');
  t.equal(pool.stats().exits, 0);
  t.equal(pool.stats().inProcess, 0);
});

t.test('a child that reads but never answers is ended at the request timeout, and replaced', async (t) => {
  process.env.FAULTY_CHILD_MODE = 'silent';
  t.teardown(() => void delete process.env.FAULTY_CHILD_MODE);
  const logger = recordingLogger();
  const pool = new PreprocessPool({ processes: 1, imageFormats: ['png'], logger, childUrl: FAULTY, requestTimeoutMs: 200 });
  t.teardown(() => pool.close());
  t.ok(await pool.whenReady());
  const first = pool.pids()[0];
  const err = await rejection(pool.prepare(Buffer.from('x'), yoloxNanoSpec, limits));
  t.equal(err.code, 'INTERNAL');
  t.match(err.message, /SIGKILL/);
  t.match(logger.lines.find((l) => l.msg === 'preprocessing process misbehaved: ending it')?.obj, { why: 'a request unanswered after 200 ms' });
  t.ok(await until(() => pool.stats().ready === 1 && pool.pids()[0] !== first), 'a new child');
});

t.test('a child that cannot be started does not bring the server down: images are prepared here, and it is retried', async (t) => {
  const exits: number[] = [];
  const logger = recordingLogger();
  const pool = new PreprocessPool({
    processes: 2,
    imageFormats: ['png'],
    logger,
    execPath: '/nonexistent/node',
    onUnexpectedExit: () => exits.push(1),
  });
  t.teardown(() => pool.close());
  t.notOk(await pool.whenReady(300), 'never ready');
  const png = await sharp({ create: { width: 32, height: 32, channels: 3, background: '#ffffff' } }).png().toBuffer();
  const image = await pool.prepare(png, yoloxNanoSpec, { ...limits, allowedFormats: new Set(['png']) });
  t.equal(image.width, 416, 'prepared in this process');
  t.ok(await until(() => exits.length >= 4), 'each slot retried after its first failure');
  const failures = logger.lines.filter((l) => l.msg === 'preprocessing process exited' || l.msg === 'preprocessing process could not be started');
  t.ok(failures.length >= 4, `${failures.length} failures logged`);
  const delays = failures.map((l) => (l.obj as { restartInMs: number }).restartInMs);
  t.same(delays.slice(0, 2), [1000, 1000], 'the first failure of each slot: 1 s');
  t.ok(delays.slice(2).every((d) => d === 2000), `the second of each: 2 s (${delays.join(', ')})`);
});

t.test('a pool of 0 prepares in this process', async (t) => {
  const pool = new PreprocessPool({ processes: 0, imageFormats: ['png'], logger: recordingLogger() });
  t.equal(pool.pids().length, 0);
  t.ok(await pool.whenReady(10));
  const err = await rejection(pool.prepare(Buffer.from('x'), yoloxNanoSpec, limits));
  t.equal(err.code, 'UNSUPPORTED_MEDIA_TYPE');
  t.equal(pool.stats().inProcess, 0, 'not a fallback: there are no children to fall back from');
  t.throws(() => new PreprocessPool({ processes: -1, imageFormats: ['png'], logger: recordingLogger() }), RangeError);
  await pool.close();
});
