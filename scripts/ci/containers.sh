#!/usr/bin/env bash
# Container checks, run for real (called by .ci/run; runs standalone as `bash scripts/ci/containers.sh`).
#
# Starts a private Docker engine, builds the three image targets on local stand-in bases (no image can be pulled
# here; the GPU target with ORT_NODE_INSTALL=skip), checks that WebGPU finds lavapipe in the webgpu image, runs the cpu and gpu images with the shared models mounted read-only, waits for
# `healthy`, posts real photos, checks the process is non-root under tini on a read-only root filesystem, checks
# that `docker stop` drains in seconds without losing an accepted request, brings the default compose service up
# to healthy and answering and down again, confirms the gpu profile asks the engine for an NVIDIA device and the
# webgpu profile for /dev/dri, and runs
# `promtool check config`. Needs root (Debian 12). Prints one line per check; exits non-zero if any failed.
# Everything it starts is removed by the EXIT trap: containers, volumes, networks, dockerd (by pid), netns
# mounts, docker0, the temporary folder.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"
started=$SECONDS

SHARED_DIR="${OCULAR_SHARED_DIR:-$(cd .. && pwd)/shared}"
# The Debian stand-in base is cached between local runs (debootstrap takes ~40 s); CI machines start empty.
CACHE_DIR="${OCULAR_CI_CACHE:-/var/tmp/ocular-ci-cache}"
MIRROR="${OCULAR_CI_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${OCULAR_CI_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
DOCKER=/usr/bin/docker # Debian's 20.10 client: BuildKit with --secret (a preinstalled newer client may lack buildx)
IMG=ocular-ci
# The build context: the checkout (CI); a developer may point it at a clean snapshot while others edit the tree.
CONTEXT="${OCULAR_CI_BUILD_CONTEXT:-$repo}"
COMPOSE_FILE_PATH="${OCULAR_CI_COMPOSE_FILE:-$repo/compose.yaml}"
UID_EXPECTED=10001
P_CPU=18180 P_GPU=18181 P_COMPOSE=18182

passed=0 failed=0
ok() { passed=$((passed + 1)); printf 'ok     %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAILED %s\n' "$*"; }
check() { # check "description" command...
  local what="$1"; shift
  if "$@"; then ok "$what"; else bad "$what"; return 1; fi
}
die() { bad "$*"; exit 1; }
step() { printf '\n--- %s (%ss)\n' "$*" "$((SECONDS - started))"; }

work=""
dockerd_pid=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    COMPOSE_PROJECT_NAME=ocularci docker-compose -f "$COMPOSE_FILE_PATH" --profile gpu --profile webgpu --profile monitoring \
      down -v --remove-orphans >/dev/null 2>&1
    local ids; ids="$("$DOCKER" ps -aq 2>/dev/null)"
    [ -n "$ids" ] && "$DOCKER" rm -f $ids >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$dockerd_pid" 2>/dev/null
  fi
  if [ -n "$work" ]; then
    # Unmount whatever the engine left under the work folder (netns files, overlays), deepest first.
    findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r m; do umount -l "$m"; done
    mountpoint -q "$work" && umount -l "$work"
    rm -rf "$work"
  fi
  ip link show docker0 >/dev/null 2>&1 && ip link delete docker0
  echo
  echo "container checks: ${passed} passed, ${failed} failed, $((SECONDS - started))s"
  if [ "$failed" -gt 0 ] && [ "$rc" -eq 0 ]; then rc=1; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || die "needs root (starts its own Docker engine)"
[ -d "$SHARED_DIR/models" ] || die "shared models not found at $SHARED_DIR/models (set OCULAR_SHARED_DIR)"

step "packages"
need=()
command -v dockerd >/dev/null && [ -x /usr/bin/docker ] || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v promtool >/dev/null || need+=(prometheus)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
    die "apt-get install ${need[*]}"
fi
echo "$("$DOCKER" --version); $(docker-compose --version); $(promtool --version 2>&1 | head -n 1)"

step "docker engine"
work="$(mktemp -d /tmp/ocular-ci.XXXXXX)"
# The engine's data lives in memory: builds are faster and cleanup is an unmount, not a minute of rm -rf.
mount -t tmpfs -o size=8g,mode=0700 ocular-ci "$work" || die "tmpfs for the engine"
export DOCKER_HOST="unix://$work/docker.sock"
# Without XDG_RUNTIME_DIR: runc keeps its exec state there when it is set, and a folder that does not exist (yet) fails
# every `docker exec`, HEALTHCHECK included ("OCI runtime exec failed: open $XDG_RUNTIME_DIR/runc-process…").
env -u XDG_RUNTIME_DIR dockerd --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" --host "$DOCKER_HOST" \
  >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 100); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.2; done
"$DOCKER" info >/dev/null 2>&1 || { tail -n 20 "$work/dockerd.log"; die "dockerd did not start"; }
ok "dockerd $("$DOCKER" version -f '{{.Server.Version}}') up (pid $dockerd_pid, storage $("$DOCKER" info -f '{{.Driver}}'))"

step "stand-in base images"
mkdir -p "$CACHE_DIR"
rootfs_tar="$CACHE_DIR/debian-bookworm-minbase.tar"
if [ ! -s "$rootfs_tar" ]; then
  debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log"; die "debootstrap"; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar --numeric-owner -C "$work/rootfs" -cf "$rootfs_tar.part" . && mv "$rootfs_tar.part" "$rootfs_tar"
  rm -rf "$work/rootfs"
fi
"$DOCKER" import -c 'CMD ["/bin/bash"]' "$rootfs_tar" localhost/debian:bookworm >/dev/null || die "import debian"
# Node stand-in: the Debian base plus this machine's node and npm where the official image has them.
node_bin="$(readlink -f "$(command -v node)")"
npm_dir="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
mkdir -p "$work/node/usr/local/bin" "$work/node/usr/local/lib/node_modules"
cp "$node_bin" "$work/node/usr/local/bin/node"
cp -r "$npm_dir" "$work/node/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$work/node/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$work/node/usr/local/bin/npx"
"$DOCKER" build -q -t localhost/node:standin -f - "$work/node" >/dev/null <<'EOF' || die "node stand-in"
FROM localhost/debian:bookworm
COPY usr /usr
EOF
# CUDA stand-in: the plain Debian base (no CUDA here); the real build uses nvidia/cuda:*-cudnn-runtime-*.
"$DOCKER" tag localhost/debian:bookworm localhost/cuda:12-cudnn-runtime-standin
ok "stand-ins: localhost/debian:bookworm, localhost/node:standin (node $(node -v)), localhost/cuda:12-cudnn-runtime-standin"

step "build"
build() { # build TARGET TAG
  DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain \
    --secret "id=npm_ca,src=$CA_BUNDLE" \
    --build-arg NODE_IMAGE=localhost/node:standin \
    --build-arg CUDA_IMAGE=localhost/cuda:12-cudnn-runtime-standin \
    --build-arg ORT_NODE_INSTALL=skip \
    -f "$CONTEXT/docker/Dockerfile" --target "$1" -t "$2" "$CONTEXT" >"$work/build-$1.log" 2>&1
}
for target in runtime-cpu runtime-gpu runtime-webgpu; do
  t0=$SECONDS
  if build "$target" "$IMG:${target#runtime-}"; then
    ok "build $target ($((SECONDS - t0))s)"
  else
    tail -n 40 "$work/build-$target.log"; die "build $target"
  fi
done

describe_image() { # size, layers, and the largest layers
  local size layers
  size="$("$DOCKER" image inspect -f '{{.Size}}' "$1")"
  layers="$("$DOCKER" image inspect -f '{{len .RootFS.Layers}}' "$1")"
  echo "$1: $((size / 1000000)) MB, $layers layers; largest:"
  "$DOCKER" history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$1" | sort -h -r | head -n 4 |
    cut -c1-150 | sed 's/^/    /'
}
for tag in cpu gpu webgpu; do describe_image "$IMG:$tag"; done

image_checks() { # image_checks TAG
  local img="$IMG:$1" user hc
  user="$("$DOCKER" image inspect -f '{{.Config.User}}' "$img")"
  check "$img: USER '$user' is the fixed non-root uid $UID_EXPECTED" test "${user%%:*}" = "$UID_EXPECTED"
  hc="$("$DOCKER" image inspect -f '{{join .Config.Healthcheck.Test " "}}' "$img")"
  check "$img: HEALTHCHECK probes /readyz" grep -q '/readyz' <<<"$hc"
  check "$img: no .onnx file and no /models content in the image" \
    bash -c "! '$DOCKER' run --rm --entrypoint /bin/sh '$img' -c 'find / -xdev -name \"*.onnx\" | grep -q . || ls -A /models | grep -q .'"
}
for tag in cpu gpu webgpu; do image_checks "$tag"; done
# No GPU here: WebGPU must find Mesa's lavapipe through the image's Vulkan loader, and Ocular must call it software.
# Judged from what the probe prints, not its exit status: Dawn's teardown at process exit is not ours to test.
webgpu_probe() {
  "$DOCKER" run --rm --read-only --tmpfs /tmp -v "$SHARED_DIR/models:/models:ro" --entrypoint node "$IMG:webgpu" --input-type=module -e "
    const ort = await import('/app/node_modules/onnxruntime-node/dist/index.js');
    const { detectVulkanDriver } = await import('/app/dist/src/core/runner/vulkan-driver.js');
    const s = await ort.InferenceSession.create('/models/ultraface-rfb-320/model.onnx', { executionProviders: ['webgpu'], logSeverityLevel: 4 });
    const r = detectVulkanDriver();
    console.log(JSON.stringify({ inputs: s.inputNames, software: r.software, active: r.active.map((i) => i.library) }));
    await s.release();" 2>/dev/null | tail -n 1
}
probe="$(webgpu_probe || true)"
check "webgpu image: a WebGPU session on lavapipe, named a software driver ($probe)" \
  bash -c 'grep -q "\"inputs\":\[\"input\"\]" <<<"$1" && grep -q "\"software\":true" <<<"$1" && grep -q "libvulkan_lvp" <<<"$1"' _ "$probe"
check "webgpu image sets OCULAR_DEVICE=webgpu and XDG_RUNTIME_DIR" \
  bash -c "'$DOCKER' image inspect -f '{{join .Config.Env \" \"}}' $IMG:webgpu | grep -q 'OCULAR_DEVICE=webgpu.*XDG_RUNTIME_DIR=/tmp\|XDG_RUNTIME_DIR=/tmp.*OCULAR_DEVICE=webgpu'"
check "gpu image sets NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES" \
  bash -c "'$DOCKER' image inspect -f '{{join .Config.Env \" \"}}' $IMG:gpu | grep -q NVIDIA_DRIVER_CAPABILITIES=compute"

step "run both images with the shared models"
# The test manifest points at ../../../shared/models; in the container the models are at /models.
sed 's#\.\./\.\./\.\./shared/models/#/models/#g' "$CONTEXT/test/fixtures/shared.manifest.json" | grep -v '"\$schema"' \
  >"$work/shared.manifest.json"
run_image() { # run_image TAG PORT
  "$DOCKER" run -d --name "ocular-ci-$1" --read-only --tmpfs /tmp \
    -v "$SHARED_DIR/models:/models:ro" -v "$work/shared.manifest.json:/etc/ocular/models.manifest.json:ro" \
    -v "ocular-ci-cache-$1:/var/cache/ocular" \
    -e OCULAR_MANIFEST=/etc/ocular/models.manifest.json -e OCULAR_INTRA_OP_THREADS=1 \
    --health-interval 2s -p "127.0.0.1:$2:8080" "$IMG:$1" >/dev/null
}
wait_healthy() { # wait_healthy CONTAINER SECONDS
  local s t0=$SECONDS
  for _ in $(seq 1 "$(($2 * 2))"); do
    s="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)"
    [ "$s" = healthy ] && { echo "  $1 healthy after $((SECONDS - t0))s"; return 0; }
    [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || break
    sleep 0.5
  done
  echo "  $1 is '$s'; last log lines:"; "$DOCKER" logs --tail 15 "$1" 2>&1 | cut -c1-300 | sed 's/^/    /'
  return 1
}
# predict PORT MODEL PHOTO NODE_EXPRESSION_ON_r: true when the answer satisfies the expression.
predict() {
  curl -sS --max-time 30 -X POST -H "content-type: application/octet-stream" \
    --data-binary "@$SHARED_DIR/images/$3" "http://127.0.0.1:$1/v1/models/$2/predict" >"$work/answer.json" &&
    node -e "const r=JSON.parse(require('fs').readFileSync(process.argv[1],'utf8')); process.exit(($4)?0:1)" \
      "$work/answer.json" || { echo "  answer: $(head -c 400 "$work/answer.json")"; return 1; }
}
run_image cpu "$P_CPU" || die "docker run cpu"
run_image gpu "$P_GPU" || die "docker run gpu"
for tag in cpu gpu; do
  c="ocular-ci-$tag"; port=$([ "$tag" = cpu ] && echo $P_CPU || echo $P_GPU)
  check "$c: healthy (all shared models loaded and warmed up)" wait_healthy "$c" 150 || continue
  check "$c: cat_chelsea.png is a cat (mobilenetv2)" \
    predict "$port" mobilenetv2 cat_chelsea.png "/cat/.test(r.predictions[0].label)"
  check "$c: street photo has a person (yolox-nano)" \
    predict "$port" yolox-nano street_pedestrians_vtest_f300.jpg "r.detections.some(d=>d.label==='person')"
  check "$c: process runs as uid $UID_EXPECTED" test "$("$DOCKER" exec "$c" id -u)" = "$UID_EXPECTED"
  check "$c: PID 1 is tini" test "$("$DOCKER" exec "$c" cat /proc/1/comm)" = tini
  check "$c: root filesystem is read-only" \
    bash -c "! '$DOCKER' exec '$c' sh -c 'touch /app/x || touch /x' 2>/dev/null"
  check "$c: /tmp and the cache volume are writable" "$DOCKER" exec "$c" sh -c 'touch /tmp/x /var/cache/ocular/x'
done
check "ocular-ci-gpu: fell back to the CPU with a warning (auto, no CUDA here)" \
  bash -c "'$DOCKER' logs ocular-ci-gpu 2>&1 | grep -q '\"provider\":\"cpu\"'"
# The intra-op default and `instances: auto` count CPUs capped by the container's CPU limit (src/config/cpus.ts),
# which os.availableParallelism() does not see.
cpus_under_limit() { # cpus_under_limit CPUS: what Ocular counts inside the cpu image under `docker run --cpus CPUS`
  "$DOCKER" run --rm --cpus "$1" --entrypoint node "$IMG:cpu" --input-type=module \
    -e "const { availableCpus } = await import('/app/dist/src/config/cpus.js'); console.log(availableCpus())"
}
check "cpu image: under --cpus 1 Ocular counts 1 CPU ($(nproc) cores here)" test "$(cpus_under_limit 1)" = 1

step "docker stop drains in-flight requests"
# 24 concurrent detections straight to the container's address (no docker-proxy in between, so a refused
# connection means the server never accepted it); stop as soon as the first is answered, with the rest queued or
# running. Every accepted request must be answered: 200, or 503 DRAINING for one that reached the server after
# the drain began. A reset or empty reply is a lost request.
c=ocular-ci-cpu
ip="$("$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")"
mkdir -p "$work/burst"
burst=()
for i in $(seq 1 24); do
  (
    code="$(curl -s -o "$work/burst/$i.json" -w '%{http_code}' --max-time 60 -X POST -H 'content-type: image/jpeg' \
      --data-binary "@$SHARED_DIR/images/street_pedestrians_vtest_f300.jpg" "http://$ip:8080/v1/models/yolox-nano/predict")"
    echo "$code $?" >"$work/burst/$i.code"
  ) &
  burst+=($!)
done
for _ in $(seq 1 200); do grep -qs '^200 ' "$work"/burst/*.code && break; sleep 0.05; done
t0=$(date +%s%N)
"$DOCKER" stop -t 30 "$c" >/dev/null
stop_ms=$((($(date +%s%N) - t0) / 1000000))
stop_s="$((stop_ms / 1000)).$(printf '%03d' $((stop_ms % 1000)))"
wait "${burst[@]}" # only the curls: dockerd is a background job too
answered=0 draining=0 refused=0 lost=0
for i in $(seq 1 24); do
  read -r code rc <"$work/burst/$i.code"
  if [ "$code" = 200 ]; then answered=$((answered + 1))
  elif [ "$code" = 503 ] && grep -q DRAINING "$work/burst/$i.json"; then draining=$((draining + 1))
  elif [ "$rc" = 7 ]; then refused=$((refused + 1)) # connection refused: never accepted
  else lost=$((lost + 1)); echo "  request $i: HTTP $code, curl exit $rc"; fi
done
echo "  stop took ${stop_s}s; 200: $answered, 503 DRAINING: $draining, never accepted: $refused, lost: $lost"
check "docker stop returned in ${stop_s}s (< 10 s: SIGTERM reached the server)" test "$stop_ms" -lt 10000
check "container exited 0 after draining" test "$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$c")" = 0
check "no accepted request lost ($answered answered during the stop)" test "$lost" -eq 0 -a "$answered" -gt 1
check "the server logged its drain" bash -c "'$DOCKER' logs $c 2>&1 | grep -q 'shutting down: draining'"
"$DOCKER" rm -f ocular-ci-cpu ocular-ci-gpu >/dev/null

step "compose"
# models:prepare writes the default OCR models and their manifest; compose mounts them at /models.
npm run -s models:prepare -- --out "$work/models" >"$work/models-prepare.log" 2>&1 ||
  { cat "$work/models-prepare.log"; die "models:prepare"; }
check "models:prepare wrote a manifest with relative paths" \
  node -e "const m=require(process.argv[1]); process.exit(m.models[0].detector.source.startsWith('ocr/')?0:1)" \
  "$work/models/models.manifest.json"
export COMPOSE_PROJECT_NAME=ocularci OCULAR_IMAGE=$IMG OCULAR_MODELS_DIR="$work/models" OCULAR_HTTP_PORT=$P_COMPOSE
compose() { docker-compose -f "$COMPOSE_FILE_PATH" --project-directory "$repo" "$@"; }
check "docker-compose config -q (all profiles)" compose --profile gpu --profile webgpu --profile monitoring config -q
if compose up -d --no-build >"$work/compose-up.log" 2>&1; then
  cid="$(compose ps -q ocular)"
  check "compose: default service healthy" wait_healthy "$cid" 150 &&
    check "compose: OCR reads the no-parking sign" \
      predict "$P_COMPOSE" ocr text_no_parking.jpg "r.lines.some(l=>/PARKING/i.test(l.text))"
  check "compose: only the profile-less service started" test "$(compose ps -q | wc -l)" -eq 1
else
  cat "$work/compose-up.log"; bad "compose up"
fi
check "compose down" compose down -v --remove-orphans
gpu_out="$(compose --profile gpu up -d --no-build ocular-gpu 2>&1)"
echo "  gpu profile: $(grep -o 'could not select device driver.*' <<<"$gpu_out" | head -n 1)"
check "compose: the gpu profile asks the engine for an NVIDIA GPU" \
  grep -q 'could not select device driver "nvidia" with capabilities: \[\[gpu\]\]' <<<"$gpu_out"
compose --profile gpu down -v --remove-orphans >/dev/null 2>&1
webgpu_out="$(OCULAR_RENDER_GID=44 compose --profile webgpu up -d --no-build ocular-webgpu 2>&1)"
echo "  webgpu profile: $(grep -o 'error gathering device information.*' <<<"$webgpu_out" | head -n 1)"
check "compose: the webgpu profile passes /dev/dri to the engine (absent here)" \
  grep -q 'device information while adding custom device "/dev/dri"' <<<"$webgpu_out"
compose --profile webgpu down -v --remove-orphans >/dev/null 2>&1

step "prometheus"
check "promtool check config docker/prometheus.yml" promtool check config "${OCULAR_CI_PROMETHEUS_CONFIG:-docker/prometheus.yml}"
