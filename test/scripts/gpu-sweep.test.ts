/**
 * scripts/gpu-sweep.sh, end to end on the CPU provider: one short configuration of the real server and load test
 * from dist/ (built by `npm ci`'s prepare step). The GPU figures in docs/PERFORMANCE.md came from this script on an
 * H200; here it must start the server, record what /v1/models says, keep one answer and write the summary table.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { startOptions } from '../../scripts/lib/server.js';
import { projectRoot, sharedDir, sharedTestOptions } from '../helpers/shared.js';

const run = promisify(execFile);

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const built = existsSync(join(projectRoot, 'dist/src/main.js')) && existsSync(join(projectRoot, 'dist/scripts/loadtest.js'));

t.test(
  'one configuration (two runner instances, one preprocessing process): the server started from dist, /v1/models saved, one answer kept, a summary row per concurrency',
  { ...sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', 'images'), ...(!built && { skip: 'dist/ not built: npm run build' }) },
  async (t) => {
    const out = mkdtempSync(join(tmpdir(), 'ocular-gpu-sweep-'));
    t.teardown(() => rmSync(out, { recursive: true, force: true }));
    const env = {
      ...process.env,
      SHARED: sharedDir,
      NODE: process.execPath,
      DURATION: '1',
      CONCURRENCY: '1,2',
      PORT: String(await freePort()),
    };
    const { stdout } = await run('bash', [join(projectRoot, 'scripts/gpu-sweep.sh'), out, 'mobilenetv2:cpu:2:0:off:always:2:2:1'], {
      env,
      timeout: 120_000,
    });
    const name = 'mobilenetv2-cpu-b2-d0-tune_off-pad_always-uv2-i2-p1';
    t.match(stdout, `server: ${process.execPath} ${startOptions(join(projectRoot, 'package.json')).join(' ')} dist/src/main.js`, "npm start's node options");
    t.match(stdout, `== ${name}`);
    t.match(stdout, 'preprocessing processes: 1 (setting 1)', "the configuration's preprocessing processes are up before the load");
    const stage = JSON.parse(readFileSync(join(out, `${name}.models.json`), 'utf8')).models[0].stages[0];
    t.equal(stage.provider, 'cpu');
    t.same(stage.batching.padded, true, 'padBatches always: padded, as /v1/models says');
    t.equal(stage.batching.batchLimit, 2);
    t.equal(stage.instances, 2, 'the configuration\'s instances reach the manifest');
    const answer = JSON.parse(readFileSync(join(out, `${name}.predict.json`), 'utf8'));
    t.equal(answer.status, 200);
    t.ok(answer.body.predictions.length > 0, `${answer.photo}: predictions kept`);
    const rows = readFileSync(join(out, 'summary.md'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith(`| ${name} `))
      .map((l) => l.split('|').map((c) => c.trim()));
    t.same(
      rows.map((r) => [r[2], r[3]]),
      [
        ['cpu', '1'],
        ['cpu', '2'],
      ],
      'one row per concurrency',
    );
    for (const r of rows) {
      t.ok(Number(r[4]) > 0, `${r[3]} conn: ${r[4]} req/s`);
      t.equal(r[10], '0', `${r[3]} conn: no error answers`);
    }
  },
);
