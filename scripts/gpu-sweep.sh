#!/usr/bin/env bash
# Batch-size and queue-delay sweep of Ocular on this host, without containers: what .github/workflows/gpu-loadtest.yml
# does with the GPU image, for a GPU machine where Node and the built project are at hand but Docker is not
# (docs/PERFORMANCE.md, "GPU"). For each configuration it starts `node dist/src/main.js` with a one-model manifest,
# saves /v1/models (provider, node counts per provider, batch limit), runs `dist/scripts/loadtest.js` closed loop at
# each concurrency and stops the server with SIGTERM. A configuration that fails is logged and the sweep goes on.
#
#   scripts/gpu-sweep.sh OUT_DIR [CONFIG ...]
#
# CONFIG is model:device:maxBatchSize:maxQueueDelayMs[:tune[:padBatches[:uvThreads[:instances[:preprocess]]]]], e.g.
# yolox-nano:cuda:32:2:off:gpu:16:2:auto; device is cuda, cpu or auto (OCULAR_DEVICE); tune and padBatches are the
# manifest's batching fields (default off and gpu); uvThreads, if given (may be empty), is the server's
# UV_THREADPOOL_SIZE (the libuv pool that runs sharp), else it inherits this script's; instances is the manifest's
# `instances` (runner workers, each with its own session; default the manifest's, 1); preprocess, if given, is the
# server's OCULAR_PREPROCESS_PROCESSES (child processes that decode and resize; default auto).
# Without configurations: yolox-nano (the fp32 detector, the GPU signal) on CUDA at batch 1, 8 and 32 with queue
# delays 0 and 2 ms (padded batches), batch 32 unpadded, then on the CPU provider at the default batching (tuned);
# then mobilenetv2 on CUDA at batch 1 and 32 and on the CPU.
#
# Environment: SHARED (folder with models/ and images/, default ../shared), NODE (default node), DURATION (seconds
# per load run, default 10), CONCURRENCY (default 1,16,64), CLIENT (the load test's closed-loop client: autocannon,
# the default, or lean, which costs less CPU per request on a host that also runs the server), PORT (default 18080), LOG_LEVEL (the server's, default
# warn: info logs every request). Needs `npm run build` first.
# Writes OUT_DIR/<config>.{json,md,models.json,predict.json,log} and OUT_DIR/summary.md (one table over all configurations).
set -uo pipefail

out=${1:?usage: scripts/gpu-sweep.sh OUT_DIR [model:device:batch:delayMs:tune ...]}
shift
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
  configs=(
    yolox-nano:cuda:1:0 yolox-nano:cuda:8:0 yolox-nano:cuda:8:2 yolox-nano:cuda:32:0 yolox-nano:cuda:32:2
    yolox-nano:cuda:32:2:off:off yolox-nano:cpu:8:0:cpu
    mobilenetv2:cuda:1:0 mobilenetv2:cuda:32:2 mobilenetv2:cpu:8:0:cpu
  )
fi
root=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "${SHARED:-$root/../shared}" && pwd) || { echo "no shared folder: set SHARED" >&2; exit 2; }
node=${NODE:-node}
duration=${DURATION:-10}
concurrency=${CONCURRENCY:-1,16,64}
port=${PORT:-18080}
url="http://127.0.0.1:$port"
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -f "$root/dist/src/main.js" ] || { echo "dist/src/main.js missing: run npm run build" >&2; exit 2; }
# The server runs with the node options of `npm start` (package.json), as the images and the bench run it.
read -ra node_opts < <("$node" --input-type=module -e '
  const { startOptions } = await import(process.argv[1]);
  console.log(startOptions(process.argv[2]).join(" "));
' "$root/dist/scripts/lib/server.js" "$root/package.json")
echo "server: $node ${node_opts[*]} dist/src/main.js"

# A one-model manifest from the shared fixture, with absolute paths and the batching asked for.
manifest() { # model batch delay tune pad instances file
  "$node" -e '
    const fs = require("fs"); const path = require("path");
    const [fixture, shared, model, batch, delay, tune, padBatches, instances, file] = process.argv.slice(1);
    const m = JSON.parse(fs.readFileSync(fixture, "utf8")).models.find((e) => e.name === model);
    if (!m) { console.error(`no model ${model} in ${fixture}`); process.exit(2); }
    const fix = (p) => path.join(shared, p.replace(/^(\.\.\/)+shared\//, ""));
    m.source = fix(m.source); if (m.labels) m.labels = fix(m.labels);
    m.batching = { ...m.batching, maxBatchSize: Number(batch), maxQueueDelayMs: Number(delay), maxQueueSize: 512, tune, padBatches };
    if (instances) m.instances = Number(instances);
    fs.writeFileSync(file, JSON.stringify({ models: [m] }));
  ' "$root/test/fixtures/shared.manifest.json" "$shared" "$@"
}

get() { # url file: GET into a file, fails on a non-2xx answer
  "$node" -e '
    fetch(process.argv[1]).then(async (r) => {
      const body = await r.text();
      if (process.argv[2]) require("fs").writeFileSync(process.argv[2], body);
      process.exit(r.ok ? 0 : 1);
    }, () => process.exit(1));
  ' "$1" "${2:-}"
}

server=
stop_server() {
  [ -n "$server" ] || return 0
  kill -TERM "$server" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server" 2>/dev/null
  wait "$server" 2>/dev/null
  server=
}
trap stop_server EXIT

for config in "${configs[@]}"; do
  IFS=: read -r model device batch delay tune pad uv instances preprocess <<<"$config"
  tune=${tune:-off} pad=${pad:-gpu}
  name="$model-$device-b$batch-d$delay-tune_$tune-pad_$pad${uv:+-uv$uv}${instances:+-i$instances}${preprocess:+-p$preprocess}"
  echo "== $name ($(date -u +%T))"
  manifest "$model" "$batch" "$delay" "$tune" "$pad" "${instances:-}" "$out/$name.manifest.json" || continue
  env ${uv:+UV_THREADPOOL_SIZE=$uv} ${preprocess:+OCULAR_PREPROCESS_PROCESSES=$preprocess} OCULAR_MANIFEST="$out/$name.manifest.json" OCULAR_DEVICE="$device" PORT="$port" OCULAR_GRPC_PORT=off HOST=127.0.0.1 \
    OCULAR_LOG_LEVEL="${LOG_LEVEL:-warn}" OCULAR_PLAYGROUND=false "$node" "${node_opts[@]}" "$root/dist/src/main.js" >"$out/$name.log" 2>&1 &
  server=$!
  started=$(date +%s%N)
  ready=
  for _ in $(seq 1 600); do
    if get "$url/readyz"; then ready=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    echo "   not ready; the server's log:"; tail -20 "$out/$name.log"
    stop_server
    continue
  fi
  echo "   ready in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  # Preprocessing processes start once the models are ready: wait for them (at most 10 s) before measuring.
  for i in $(seq 1 50); do
    get "$url/metrics" "$out/$name.metrics.txt" || break
    want=${preprocess:-auto}
    have=$(sed -n 's/^ocular_preprocess_processes \([0-9]*\)$/\1/p' "$out/$name.metrics.txt")
    # auto: none on the CPU provider, so at most 2 s for a first one to show.
    if [ "$want" = auto ]; then [ "${have:-0}" -gt 0 ] || [ "$i" -ge 10 ] && break; elif [ "${have:-0}" -ge "$want" ]; then break; fi
    sleep 0.2
  done
  echo "   preprocessing processes: ${have:-?} (setting ${preprocess:-auto})"
  get "$url/v1/models" "$out/$name.models.json"
  "$node" -e '
    const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).models[0];
    const s = m.stages?.[0] ?? m;
    console.log("   provider", s.provider, s.fallbackReason ?? "", "nodes", JSON.stringify(s.nodeCounts), "batchLimit", s.batching?.batchLimit, "padded", s.batching?.padded, "instances", s.instances);
  ' "$out/$name.models.json" || true
  # One answer kept for checking against another provider's: the first photo, unloaded.
  "$node" -e '
    const fs = require("fs"); const path = require("path"); const [url, model, dir, file] = process.argv.slice(1);
    const photo = fs.readdirSync(dir).filter((f) => /\.(jpe?g|png)$/i.test(f)).sort()[0];
    fetch(`${url}/v1/models/${model}/predict`, { method: "POST", body: fs.readFileSync(path.join(dir, photo)), headers: { "content-type": "application/octet-stream" } })
      .then(async (r) => { fs.writeFileSync(file, JSON.stringify({ photo, status: r.status, body: await r.json() }, null, 1)); });
  ' "$url" "$model" "$shared/images" "$out/$name.predict.json" || echo "   predict failed"
  "$node" "$root/dist/scripts/loadtest.js" --url "$url" --model "$model" --images "$shared/images" --mode closed --client "${CLIENT:-autocannon}" \
    --concurrency "$concurrency" --duration "$duration" --warmup 2 --label "$name" --out "$out/$name" |
    grep -v '^\s*$' || echo "   load test failed"
  stop_server
done

# One table over every configuration that produced a report.
"$node" -e '
  const fs = require("fs"); const path = require("path"); const dir = process.argv[1];
  const lines = ["| configuration | provider | conc | req/s | p50 ms | p99 ms | mean batch | inference ms/batch | CPU ms/req | non-2xx |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"];
  for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".json") && !/\.(models|manifest|predict)\.json$/.test(f)).sort()) {
    const name = f.replace(/\.json$/, ""); let provider = "?";
    try { const m = JSON.parse(fs.readFileSync(path.join(dir, `${name}.models.json`), "utf8")).models[0]; provider = (m.stages?.[0] ?? m).provider; } catch {}
    for (const r of JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")).rows ?? []) {
      const x = r.result; const s = r.server; const f = (v, d) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(d) : "-");
      const bad = Object.entries(x.statuses).filter(([c]) => !/^2\d\d$/.test(c)).reduce((a, [, n]) => a + n, 0);
      lines.push(`| ${name} | ${provider} | ${x.connections} | ${f(x.throughputRps, 1)} | ${f(x.latencyMs.p50, 1)} | ${f(x.latencyMs.p99, 1)} | ${f(s?.meanBatchSize, 2)} | ${f(s?.inferencePerBatchMs, 2)} | ${f(s?.cpuMsPerRequest, 1)} | ${bad} |`);
    }
  }
  fs.writeFileSync(path.join(dir, "summary.md"), lines.join("\n") + "\n");
  console.log(lines.join("\n"));
' "$out"
