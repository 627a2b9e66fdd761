import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { projectRoot } from '../../helpers/shared.js';

const MODULE = pathToFileURL(join(projectRoot, 'src', 'core', 'runner', 'device-lock.ts')).href;

/**
 * A worker that, `rounds` times, reads a shared counter, waits a little and writes it back plus one: a section that
 * loses updates whenever two threads are inside it at once.
 */
const SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
(async () => {
  // Workers do not get tsx's loader on Node 20 (see src/core/runner/worker-thread.ts): register it here.
  (await import(workerData.tsx)).register();
  const { withDeviceLock } = await import(workerData.module);
  const counter = new Int32Array(workerData.counter);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const section = async () => {
    const v = counter[0];
    Atomics.wait(pause, 0, 0, 2);
    counter[0] = v + 1;
  };
  for (let i = 0; i < workerData.rounds; i++) {
    if (workerData.locked) await withDeviceLock(workerData.lock, section);
    else await section();
  }
  parentPort.postMessage('done');
})();
`;

async function race(locked: boolean, rounds: number): Promise<number> {
  const counter = new SharedArrayBuffer(4);
  const lock = new SharedArrayBuffer(4);
  const workers = [0, 1, 2].map(
    () => new Worker(SOURCE, { eval: true, workerData: { tsx: import.meta.resolve('tsx/esm/api'), module: MODULE, counter, lock, locked, rounds } }),
  );
  await Promise.all(workers.map((w) => new Promise((resolve, reject) => w.once('message', resolve).once('error', reject))));
  await Promise.all(workers.map((w) => w.terminate()));
  return new Int32Array(counter)[0] as number;
}

t.test('the device lock lets one thread at a time into the section; without it updates are lost', async (t) => {
  const rounds = 40;
  t.equal(await race(true, rounds), 3 * rounds, 'with the lock: every update kept');
  t.ok((await race(false, rounds)) < 3 * rounds, 'without it the same section loses updates (the test can fail)');
});
