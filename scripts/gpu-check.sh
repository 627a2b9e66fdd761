#!/usr/bin/env bash
# One prepared device run on a machine with an NVIDIA GPU, no internet and no apt (docs/PERFORMANCE.md, "GPU"):
# the ranked configurations of scripts/gpu-check.configs, each one's figures written as soon as it ends
# (OUT_DIR/<name>.json, OUT_DIR/summary.md and summary.json), GPU utilisation and memory sampled once a second.
# The logic, and its environment variables, are in scripts/gpu-check.ts; this runs its build from dist/.
#
#   scripts/gpu-check.sh OUT_DIR [--configs FILE] [--dry-run]
#
# Needs `npm run build` first. For CUDA: onnxruntime-node 1.29 with the CUDA 13 provider libraries next to its
# libonnxruntime.so.1, and LD_LIBRARY_PATH on the CUDA 13 and cuDNN 9 libraries (../shared/GPU.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$root/dist/scripts/gpu-check.js" ] || { echo "dist/scripts/gpu-check.js missing: run npm run build" >&2; exit 2; }
exec "${NODE:-node}" "$root/dist/scripts/gpu-check.js" "$@"
