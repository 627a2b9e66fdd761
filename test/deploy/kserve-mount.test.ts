/**
 * The real server started as KServe starts it: the ServingRuntime's environment (rendered from k8s/kserve), its
 * model mount laid out as the example InferenceService's storage is (model.onnx, labels.txt and
 * k8s/kserve/models.manifest.json, unchanged, in one folder). The manifest's paths are relative to its own folder,
 * not to the server's working directory (the repository, where no model.onnx exists): the server must find the
 * model beside its manifest and serve it under the InferenceService's name.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Container } from 'kubernetes-types/core/v1.js';
import t from 'tap';
import { send } from '../helpers/hostile.js';
import { freePort, startServer } from '../helpers/server.js';
import { imagePath, modelPath, sharedTestOptions } from '../helpers/shared.js';
import { kustomize, repoPath } from './server-facts.js';

t.setTimeout(120_000);

const MODEL_MOUNT = '/mnt/models';

t.test('the server serves the model beside its manifest in a KServe model mount', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', 'images/cat_chelsea.png'), async (t) => {
  const docs = kustomize('k8s/kserve') as { kind: string; metadata: { name: string }; spec: { containers?: Container[] } }[];
  const container = docs.find((d) => d.kind === 'ServingRuntime')?.spec.containers?.[0];
  const isvcName = docs.find((d) => d.kind === 'InferenceService')?.metadata.name ?? '';
  const env: Record<string, string> = {};
  for (const e of container?.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  t.match(env['OCULAR_MANIFEST'], new RegExp(`^${MODEL_MOUNT}/`), 'the runtime reads its manifest from the model mount');

  // The mount: what the fill Job writes into the InferenceService's storage folder (the model's bytes are the
  // shared file's, linked rather than copied).
  const root = mkdtempSync(join(tmpdir(), 'ocular-kserve-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const mount = join(root, 'mnt', 'models');
  mkdirSync(mount, { recursive: true });
  symlinkSync(modelPath('mobilenetv2-12-int8'), join(mount, 'model.onnx'));
  symlinkSync(modelPath('mobilenetv2-12-int8', 'labels.txt'), join(mount, 'labels.txt'));
  copyFileSync(repoPath('k8s', 'kserve', 'models.manifest.json'), join(mount, (env['OCULAR_MANIFEST'] ?? '').slice(MODEL_MOUNT.length + 1)));

  const [port, probePort] = [await freePort(), await freePort()];
  const server = startServer({
    ...env,
    OCULAR_MANIFEST: join(mount, (env['OCULAR_MANIFEST'] ?? '').slice(MODEL_MOUNT.length + 1)),
    OCULAR_CACHE_DIR: join(root, 'cache'),
    PORT: String(port),
    OCULAR_PROBE_PORT: String(probePort),
    // The gRPC listener is the gRPC transport's tests' business; here it would take a fixed port.
    OCULAR_GRPC_PORT: '0',
    OCULAR_LOG_LEVEL: 'warn',
  });
  t.teardown(server.kill);

  // The runtime's readiness probe, on the probe listener.
  const readyPath = container?.readinessProbe?.httpGet?.path ?? '';
  const deadline = Date.now() + 90_000;
  let ready = 0;
  while (Date.now() < deadline && ready !== 200) {
    if (server.child.exitCode !== null) break;
    ready = await send(probePort, { path: readyPath }).then((r) => r.status, () => 0);
    if (ready !== 200) await new Promise((r) => setTimeout(r, 250));
  }
  t.equal(ready, 200, `${readyPath} on the probe port answers 200 once the model is loaded`, { stderr: server.stderr().slice(-2000), log: server.lines.slice(-5) });

  const meta = await send(port, { path: `/v2/models/${isvcName}` });
  t.equal(meta.status, 200, `/v2/models/${isvcName}: the InferenceService's name is a model the server serves`);
  t.equal((JSON.parse(meta.body) as { name?: string }).name, isvcName, 'its metadata names it so');

  const cat = await send(port, { path: `/v1/models/${isvcName}/predict`, body: readFileSync(imagePath('cat_chelsea.png')), headers: { 'content-type': 'image/png' } });
  t.equal(cat.status, 200, 'a photo is classified', { body: cat.body.slice(0, 200) });
  t.equal((JSON.parse(cat.body) as { predictions?: { label: string }[] }).predictions?.[0]?.label, 'Egyptian cat', 'the labels beside the model name the class: cat_chelsea.png is an Egyptian cat');
});
