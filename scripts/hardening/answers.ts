/**
 * Bounded answers (issue 18, item 3), full size: an OCR recogniser tensor input of 9.4 MB ([1, 3, 48, 16320] FP32)
 * whose JSON answer ([1, 2040, 6625] FP32) would be about 322 MB, sent by --clients (default 4) clients that never
 * read their answers. Two runs, each on its own server process:
 *   - default limits: every request is refused 422 RESPONSE_TOO_LARGE before the answer is written;
 *   - OCULAR_MAX_RESPONSE_BYTES raised to 512 MiB, OCULAR_RESPONSE_WRITE_TIMEOUT_MS 5 s: the answers are streamed as
 *     the clients read (they do not), and each connection is cut at the write timeout.
 * Prints, per run, the answers seen and the server's RSS peak and after, event-loop lag and /healthz latency.
 * `npx tsx scripts/hardening/answers.ts [--width 16320] [--clients 4] [--give-up-ms 60000]` (127.0.0.1 only; a tiny
 * check: --width 320 --give-up-ms 8000, whose answers fit the sockets' buffers, so nothing is cut).
 */
import { connect } from 'node:net';
import { arg, serve } from './common.js';
import { measure } from './sampling.js';

const width = arg('width', 16320);
const clients = arg('clients', 4);
/** How long to wait for the server to cut the non-reading clients. */
const giveUpMs = arg('give-up-ms', 60_000);

function request(): Buffer {
  const n = 3 * 48 * width;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.sin(i) * 0.5;
  const header = Buffer.from(
    JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3, 48, width], parameters: { binary_data_size: x.byteLength } }] }),
  );
  const body = Buffer.concat([header, Buffer.from(x.buffer)]);
  const head = [
    'POST /v2/models/ocr-rec/infer HTTP/1.1',
    'host: 127.0.0.1',
    'content-type: application/octet-stream',
    `inference-header-content-length: ${header.length}`,
    `content-length: ${body.length}`,
  ].join('\r\n');
  return Buffer.concat([Buffer.from(`${head}\r\n\r\n`), body]);
}

/**
 * Sends the request and reads its answer's first chunk only: a refusal is answered whole; a 200's connection is
 * left unread (a paused socket does not see the server close it: the server's log says when it cuts it).
 */
function nonReader(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.once('data', (chunk: Buffer) => {
      const status = chunk.toString('latin1').split('\r\n', 1)[0] ?? '';
      if (status.includes(' 200 ')) socket.pause();
      else socket.destroy();
      resolve(status);
    });
    socket.write(bytes);
    cleanups.push(() => socket.destroy());
  });
}
const cleanups: (() => void)[] = [];
const CUT = 'answer not read in time: connection closed';

async function run(name: string, env: Record<string, string>): Promise<void> {
  const { server, port } = await serve(['ocr-rec'], (m) => m, env);
  const pid = server.child.pid as number;
  const bytes = request();
  const { value, figures } = await measure(port, pid, async () => {
    const statuses = await Promise.all(Array.from({ length: clients }, () => nonReader(port, bytes)));
    const streamed = statuses.filter((s) => s.includes(' 200 ')).length;
    const since = performance.now();
    while (server.lines.filter((l) => l['msg'] === CUT).length < streamed && performance.now() - since < giveUpMs) {
      await new Promise((r) => setTimeout(r, 100));
    }
    return { statuses, cut: server.lines.filter((l) => l['msg'] === CUT).length, cutWithinMs: Math.round(performance.now() - since) };
  });
  const answers: Record<string, number> = {};
  for (const v of value.statuses) answers[v] = (answers[v] ?? 0) + 1;
  console.log(JSON.stringify({ run: name, width, clients, requestBytes: bytes.length, answers, cutByWriteTimeout: value.cut, cutWithinMs: value.cutWithinMs, ...figures }));
  for (const c of cleanups.splice(0)) c();
  server.kill();
}

await run('default limits', {});
await run('512 MiB answers, 5 s write timeout', { OCULAR_MAX_RESPONSE_BYTES: String(512 * 1024 * 1024), OCULAR_RESPONSE_WRITE_TIMEOUT_MS: '5000' });
process.exit(0);
