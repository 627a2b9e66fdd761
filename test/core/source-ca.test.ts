/**
 * OCULAR_SOURCE_CA_FILE adds to the roots Node trusts; it does not replace them. Two local HTTPS servers, each
 * with a certificate for 127.0.0.1 signed by a CA made for this run: one CA is in the CA file, the other is one
 * Node already trusts through NODE_EXTRA_CA_CERTS. Downloads run in a child process (Node reads
 * NODE_EXTRA_CA_CERTS only at startup): with both set, both sources download; the controls show that each
 * server is trusted only through its own CA.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { projectRoot } from '../helpers/shared.js';

t.setTimeout(120_000);

const run = promisify(execFile);

function haveOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
}

interface Ca {
  pem: Buffer;
  leafKey: Buffer;
  leafCert: Buffer;
}

/** A CA named `name` and a server certificate for 127.0.0.1 it signed. */
async function makeCa(dir: string, name: string): Promise<Ca> {
  const p = (f: string) => join(dir, `${name}-${f}`);
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=Ocular test CA ${name}`, '-days', '1',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-keyout', p('ca.key'), '-out', p('ca.pem')]);
  await run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', p('leaf.key'), '-out', p('leaf.csr')]);
  await writeFile(p('ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await run('openssl', ['x509', '-req', '-in', p('leaf.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-days', '1',
    '-extfile', p('ext'), '-out', p('leaf.pem')]);
  return { pem: await readFile(p('ca.pem')), leafKey: await readFile(p('leaf.key')), leafCert: await readFile(p('leaf.pem')) };
}

/** An HTTPS server on 127.0.0.1 answering `/model.onnx` with `body`, closed on teardown; its URL. */
async function serve(t: Test, ca: Ca, body: Buffer): Promise<string> {
  const server = createServer({ key: ca.leafKey, cert: ca.leafCert }, (req, res) => {
    if (req.url === '/model.onnx') res.end(body);
    else res.writeHead(404).end();
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}/model.onnx`;
}

t.test('with OCULAR_SOURCE_CA_FILE set, sources signed by its CA and by a CA Node already trusts both download', { skip: haveOpenssl() ? false : 'openssl is not installed: cannot make test CAs' }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-source-ca-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const [fileCa, extraCa, otherCa] = await Promise.all([makeCa(dir, 'file'), makeCa(dir, 'extra'), makeCa(dir, 'other')]);
  // The CA file holds two certificates (an unrelated CA first): every certificate of the file is added.
  const caFile = join(dir, 'source-ca.pem');
  await writeFile(caFile, Buffer.concat([otherCa.pem, fileCa.pem]));
  const extraFile = join(dir, 'node-extra-ca.pem');
  await writeFile(extraFile, extraCa.pem);

  const bodies = [randomBytes(2048), randomBytes(2048)] as const;
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const viaFile = await serve(t, fileCa, bodies[0]);
  const viaExtra = await serve(t, extraCa, bodies[1]);
  const urls = JSON.stringify([{ url: viaFile, sha256: sha(bodies[0]) }, { url: viaExtra, sha256: sha(bodies[1]) }]);

  let n = 0;
  const download = async (env: Record<string, string>): Promise<Record<string, string>> => {
    const base: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (k !== 'NODE_OPTIONS' && k !== 'NODE_EXTRA_CA_CERTS' && !k.startsWith('TAP')) base[k] = v;
    const { stdout } = await run(process.execPath, ['--import=tsx', join(projectRoot, 'test', 'fixtures', 'source-ca-child.ts')], {
      cwd: projectRoot,
      env: { ...base, SOURCE_CA_URLS: urls, SOURCE_CA_CACHE: join(dir, `cache-${n++}`), ...env },
    });
    return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, string>;
  };

  const both = await download({ NODE_EXTRA_CA_CERTS: extraFile, SOURCE_CA_FILE: caFile });
  t.equal(both[viaFile], 'ok', 'the source signed by the CA file downloads');
  t.equal(both[viaExtra], 'ok', 'the source signed by a CA from NODE_EXTRA_CA_CERTS downloads too');

  // Controls: each server is trusted through its own CA only.
  const fileOnly = await download({ SOURCE_CA_FILE: caFile });
  t.equal(fileOnly[viaFile], 'ok');
  t.match(fileOnly[viaExtra], /certificate|self.signed|verify/i, `without NODE_EXTRA_CA_CERTS the other source is refused: ${fileOnly[viaExtra]}`);
  const extraOnly = await download({ NODE_EXTRA_CA_CERTS: extraFile });
  t.match(extraOnly[viaFile], /certificate|self.signed|verify/i, `without the CA file its source is refused: ${extraOnly[viaFile]}`);
  t.equal(extraOnly[viaExtra], 'ok');
});
