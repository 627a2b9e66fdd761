/**
 * A liveness prober in a process of its own, as a kubelet is: it polls GET `path` every `intervalMs` on one
 * keep-alive connection until its stdin closes, then prints every latency (ms) as one JSON array and exits.
 * A failed probe counts as its elapsed time, so an unanswering server shows up. Run by probeLatency
 * (scripts/lib/load.ts); it prints "ready" once its first probe has been answered.
 *
 *   node --import tsx scripts/lib/probe-child.ts URL INTERVAL_MS PATH
 */
import http from 'node:http';

const [baseUrl, intervalArg, path = '/healthz'] = process.argv.slice(2);
if (baseUrl === undefined || intervalArg === undefined) {
  process.stderr.write('usage: probe-child.ts URL INTERVAL_MS [PATH]\n');
  process.exit(2);
}
const intervalMs = Number(intervalArg);
const url = new URL(baseUrl);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const samples: number[] = [];
let stopped = false;
process.stdin.on('end', () => {
  stopped = true;
});
process.stdin.resume();

function probeOnce(): Promise<void> {
  return new Promise<void>((resolve) => {
    const req = http.get({ agent, host: url.hostname, port: url.port, path, timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve());
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve());
  });
}

await probeOnce();
process.stdout.write('ready\n');
while (!stopped) {
  const t0 = performance.now();
  await probeOnce();
  samples.push(performance.now() - t0);
  const rest = intervalMs - (performance.now() - t0);
  if (rest > 0) await new Promise((r) => setTimeout(r, rest));
}
agent.destroy();
process.stdout.write(`${JSON.stringify(samples)}\n`);
