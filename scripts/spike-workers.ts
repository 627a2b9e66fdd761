/**
 * Spike: do onnxruntime-node sessions hold up in worker threads? (microsoft/onnxruntime#24486 reported crashes
 * with several workers.)
 *
 * N workers each loop: create a session, run a few batches, release it. Every few seconds the main thread ends one
 * worker and starts a replacement. At the end it prints totals as JSON and exits non-zero on any error or crash.
 *
 * How a worker is ended (--terminate):
 * - soft (default): the main thread raises the worker's retire flag; the worker sees it at its next JS step
 *   (right after a create or a run, session still open, outputs alive) and calls process.exit. This is how the
 *   session pool ends workers (its `crash` hook) and replaces dead ones.
 * - hard: worker.terminate() at a random moment. With onnxruntime-node 1.30 on Node 20 this aborts the WHOLE
 *   process ("terminate called after throwing an instance of 'Napi::Error'") whenever it lands while the worker
 *   is inside a native create or run: the binding's C++ exception escapes once the isolate is terminating. A
 *   worker idle in JS (even holding a session and output tensors) terminates cleanly. Hence the pool never calls
 *   terminate() on a worker that may be inside onnxruntime; it asks workers to close and waits for them.
 *
 *   npx tsx scripts/spike-workers.ts [--seconds 60] [--workers 4] [--replace-every-ms 3000] [--terminate soft|hard]
 *     [--batches 3] [--batch-size 2] [--model path/to/model.onnx | path/to/model.onnx]
 *
 * The model's first input must be float32 with a dynamic batch and fixed other dims (default: mobilenetv2-12-int8
 * from the shared models folder).
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

interface SpikeWorkerData {
  modelPath: string;
  batches: number;
  batchSize: number;
  /** Int32 at 0: set to 1 by the main thread to ask every worker to finish its cycle and exit. */
  stop: SharedArrayBuffer;
  /** This worker's own Int32 flag: 1 = exit (process.exit) at the next JS step, session left open. */
  retire: SharedArrayBuffer;
}

type SpikeMessage =
  | { type: 'created' }
  | { type: 'run' }
  | { type: 'released' }
  | { type: 'error'; message: string };

async function workerLoop(data: SpikeWorkerData): Promise<void> {
  const port = parentPort;
  if (port === null) return;
  const post = (msg: SpikeMessage): void => port.postMessage(msg);
  const stop = new Int32Array(data.stop);
  const retire = new Int32Array(data.retire);
  const checkRetire = (): void => {
    if (Atomics.load(retire, 0) === 1) process.exit(0);
  };
  ort.env.logLevel = 'fatal';
  while (Atomics.load(stop, 0) === 0) {
    let session: ort.InferenceSession | undefined;
    try {
      session = await ort.InferenceSession.create(data.modelPath, {
        executionProviders: ['cpu'],
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        logSeverityLevel: 4,
      });
      post({ type: 'created' });
      checkRetire();
      const meta = session.inputMetadata[0];
      if (meta === undefined || !meta.isTensor) throw new Error('model has no tensor input');
      const dims = meta.shape.map((d, i) => (i === 0 ? data.batchSize : typeof d === 'number' ? d : 1));
      const size = dims.reduce((a, b) => a * b, 1);
      for (let b = 0; b < data.batches; b++) {
        const input = new Float32Array(size);
        for (let i = 0; i < size; i++) input[i] = Math.random() * 2 - 1;
        const out = await session.run({ [meta.name]: new ort.Tensor('float32', input, dims) });
        const first = Object.values(out)[0];
        if (first === undefined || first.dims[0] !== data.batchSize) throw new Error('unexpected output shape');
        const values = first.data as Float32Array;
        if (!values.every(Number.isFinite)) throw new Error('non-finite output');
        post({ type: 'run' });
        checkRetire();
      }
    } catch (err) {
      post({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    } finally {
      if (session !== undefined) {
        await session.release();
        post({ type: 'released' });
      }
    }
  }
}

/** The worker is this file. Run from sources, it registers tsx itself (tsx's --import hook skips workers on Node 20). */
function startWorker(data: SpikeWorkerData): Worker {
  const self = new URL(import.meta.url);
  if (!self.pathname.endsWith('.ts')) return new Worker(self, { workerData: data });
  const bootstrap =
    `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
    `.then((tsx) => { tsx.register(); return import(${JSON.stringify(self.href)}); })`;
  return new Worker(bootstrap, { eval: true, workerData: data });
}

const mb = (bytes: number): number => Math.round((bytes / 1024 / 1024) * 10) / 10;

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    options: {
      seconds: { type: 'string', default: '60' },
      workers: { type: 'string', default: '4' },
      'replace-every-ms': { type: 'string', default: '3000' },
      batches: { type: 'string', default: '3' },
      'batch-size': { type: 'string', default: '2' },
      terminate: { type: 'string', default: 'soft' },
      model: { type: 'string' },
    },
    allowPositionals: true,
  });
  const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const sharedDir = resolve(process.env['OCULAR_SHARED_DIR'] ?? join(projectRoot, '..', 'shared'));
  const modelPath = resolve(
    values.model ?? positionals[0] ?? join(sharedDir, 'models', 'mobilenetv2-12-int8', 'model.onnx'),
  );
  if (!existsSync(modelPath)) {
    process.stderr.write(`model not found: ${modelPath}\n`);
    return 2;
  }
  const seconds = Number(values.seconds);
  const workerCount = Number(values.workers);
  const replaceEveryMs = Number(values['replace-every-ms']);
  const hard = values.terminate === 'hard';
  const data: Omit<SpikeWorkerData, 'stop' | 'retire'> = {
    modelPath,
    batches: Number(values.batches),
    batchSize: Number(values['batch-size']),
  };
  const stopBuffer = new SharedArrayBuffer(4);
  const stop = new Int32Array(stopBuffer);

  const totals = { sessionsCreated: 0, sessionsReleased: 0, runs: 0, replacements: 0, errors: 0, crashes: 0 };
  const errorMessages: string[] = [];
  const rssStart = process.memoryUsage().rss;
  let rssPeak = rssStart;
  const live = new Map<Worker, Int32Array>();
  const terminating = new Set<Worker>();
  const exits: Promise<void>[] = [];

  const spawn = (): void => {
    const retire = new Int32Array(new SharedArrayBuffer(4));
    const worker = startWorker({ ...data, stop: stopBuffer, retire: retire.buffer as SharedArrayBuffer });
    live.set(worker, retire);
    worker.on('message', (msg: SpikeMessage) => {
      if (msg.type === 'created') totals.sessionsCreated++;
      else if (msg.type === 'run') totals.runs++;
      else if (msg.type === 'released') totals.sessionsReleased++;
      else {
        totals.errors++;
        if (errorMessages.length < 10) errorMessages.push(msg.message);
      }
    });
    worker.on('error', (err) => {
      totals.errors++;
      if (errorMessages.length < 10) errorMessages.push(`worker error: ${err.message}`);
    });
    exits.push(
      new Promise<void>((done) =>
        worker.once('exit', (code) => {
          live.delete(worker);
          // A terminated worker exits with 1, a retired one with 0; any other unexpected exit is a crash.
          if (!terminating.has(worker) && code !== 0) totals.crashes++;
          done();
        }),
      ),
    );
  };

  for (let i = 0; i < workerCount; i++) spawn();
  const rssTimer = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 250);
  const replaceTimer = setInterval(() => {
    const victims = [...live.keys()].filter((w) => !terminating.has(w));
    const victim = victims[Math.floor(Math.random() * victims.length)];
    if (victim === undefined) return;
    terminating.add(victim);
    totals.replacements++;
    if (hard) void victim.terminate();
    else Atomics.store(live.get(victim) as Int32Array, 0, 1);
    spawn();
  }, replaceEveryMs);

  const startedAt = Date.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  clearInterval(replaceTimer);
  Atomics.store(stop, 0, 1);
  await Promise.all(exits);
  clearInterval(rssTimer);
  const rssEnd = process.memoryUsage().rss;
  rssPeak = Math.max(rssPeak, rssEnd);

  const result = {
    model: modelPath,
    node: process.version,
    onnxruntime: ort.env.versions.common,
    workers: workerCount,
    seconds: Math.round((Date.now() - startedAt) / 100) / 10,
    replaceEveryMs,
    terminate: hard ? 'hard' : 'soft',
    ...totals,
    rssStartMB: mb(rssStart),
    rssEndMB: mb(rssEnd),
    rssPeakMB: mb(rssPeak),
    ...(errorMessages.length > 0 && { errorMessages }),
  };
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  return totals.errors > 0 || totals.crashes > 0 ? 1 : 0;
}

if (isMainThread) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
} else {
  void workerLoop(workerData as SpikeWorkerData);
}
