/**
 * The server with its images prepared in child processes (OCULAR_PREPROCESS_PROCESSES): the same answers as
 * without, over HTTP and the v2 API, the processes visible in /metrics, and `auto` leaving a CPU-only server as it
 * was.
 */
import { readdirSync, readFileSync } from 'node:fs';
import t from 'tap';
import { buildTestApp, sharedModel, writeManifest } from '../helpers/app.js';
import { imagePath, sharedPath, sharedTestOptions } from '../helpers/shared.js';
import { parseConfig } from '../../src/config/config.js';
import { binaryRequest, bytesElements } from '../v2/helpers.js';

const needs = sharedTestOptions('models/yolox-nano/model.onnx', 'models/mobilenetv2-12-int8/model.onnx', 'images');

t.test('OCULAR_PREPROCESS_PROCESSES is validated', async (t) => {
  t.equal(parseConfig({}, []).config.preprocessProcesses, 'auto', 'default auto');
  t.equal(parseConfig({ OCULAR_PREPROCESS_PROCESSES: '6' }, []).config.preprocessProcesses, 6);
  t.equal(parseConfig({}, ['--preprocess-processes', '0']).config.preprocessProcesses, 0);
  for (const bad of ['-1', 'many', '2.5', '257']) {
    t.throws(() => parseConfig({ OCULAR_PREPROCESS_PROCESSES: bad }, []), /OCULAR_PREPROCESS_PROCESSES/, `"${bad}" refused`);
  }
});

t.test('detections and labels are the same with the images prepared in two child processes', needs, async (t) => {
  const manifest = writeManifest([sharedModel('yolox-nano'), sharedModel('mobilenetv2')]);
  const inProcess = await buildTestApp(t, { manifestPath: manifest, config: { preprocessProcesses: 0 } });
  const children = await buildTestApp(t, { manifestPath: manifest, config: { preprocessProcesses: 2 } });
  t.equal(await inProcess.app.ocular.startPreprocessing(), 0);
  t.equal(inProcess.app.ocular.preprocess, undefined);
  t.equal(await children.app.ocular.startPreprocessing(), 2);
  t.equal(await children.app.ocular.startPreprocessing(), 2, 'started once');
  const pool = children.app.ocular.preprocess;
  t.equal(pool?.stats().ready, 2);
  t.equal(children.logs.find('preprocessing processes ready').length, 1);

  const photos = readdirSync(sharedPath('images')).filter((f) => /\.(jpe?g|png)$/i.test(f)).sort();
  for (const model of ['yolox-nano', 'mobilenetv2']) {
    for (const name of photos) {
      const payload = readFileSync(imagePath(name));
      const ask = (app: typeof inProcess.app) =>
        app.inject({ method: 'POST', url: `/v1/models/${model}/predict`, headers: { 'content-type': 'application/octet-stream' }, payload });
      const [a, b] = await Promise.all([ask(inProcess.app), ask(children.app)]);
      t.equal(b.statusCode, 200, `${model} ${name}: 200`);
      t.same(b.json(), a.json(), `${model} ${name}: the same answer`);
    }
  }
  const bad = await children.app.inject({
    method: 'POST',
    url: '/v1/models/yolox-nano/predict',
    headers: { 'content-type': 'application/octet-stream' },
    payload: readFileSync(imagePath('fruits.jpg')).subarray(0, 20_000),
  });
  t.equal(bad.statusCode, 422);
  t.equal(bad.json().code, 'IMAGE_DECODE_FAILED', 'a decode error from a child is the same 422');

  // The v2 API's BYTES inputs are prepared the same way.
  const jpeg = readFileSync(imagePath('soccer_player.jpg'));
  const v2 = binaryRequest([{ name: 'image', datatype: 'BYTES', shape: [2], bytes: bytesElements([jpeg, jpeg]) }], {
    outputs: [{ name: 'output', parameters: { classification: 3 } }],
  });
  const v2Ask = (app: typeof inProcess.app) =>
    app.inject({ method: 'POST', url: '/v2/models/mobilenetv2/infer', headers: v2.headers, payload: v2.body });
  const [va, vb] = await Promise.all([v2Ask(inProcess.app), v2Ask(children.app)]);
  t.equal(vb.statusCode, 200, vb.statusCode === 200 ? 'v2: 200' : vb.body);
  t.ok(vb.rawPayload.equals(va.rawPayload), 'v2: the same response, byte for byte');

  const metrics = await children.app.inject({ method: 'GET', url: '/metrics' });
  t.match(metrics.body, /^ocular_preprocess_processes 2$/m);
  t.match(metrics.body, /^ocular_preprocess_process_exits_total 0$/m);
  t.equal(pool?.stats().inProcess, 0, 'every image went to a child');
  const none = await inProcess.app.inject({ method: 'GET', url: '/metrics' });
  t.match(none.body, /^ocular_preprocess_processes 0$/m);

  const pids = pool?.pids() ?? [];
  await children.app.close();
  for (const pid of pids) t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `closing the app ended child ${pid}`);
});

t.test('auto starts none where every model runs on the CPU', needs, async (t) => {
  const manifest = writeManifest([sharedModel('mobilenetv2')]);
  const { app } = await buildTestApp(t, { manifestPath: manifest, config: { preprocessProcesses: 'auto' } });
  t.equal(await app.ocular.startPreprocessing(), 0);
  t.equal(app.ocular.preprocess, undefined);
});
