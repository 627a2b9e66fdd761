#!/usr/bin/env bash
# The WebGPU provider's system dependencies for the GPU suite (test/gpu/): the Vulkan loader and Mesa 25's
# software Vulkan driver (lavapipe). Debian 12's own Mesa 22.3 lavapipe is refused by Dawn ("No supported
# adapters"), so Mesa comes from bookworm-backports, added to apt's sources with the mirror and keyring of the
# existing bookworm entry when it is not there yet. Idempotent: installs nothing that is already installed.
# Needs root (CI runs as root); prints the driver's version at the end.
set -euo pipefail

sources=/etc/apt/sources.list.d/backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/debian.sources | head -n 1 | awk '{print $2}')"
  keyring="$(grep -hsE '^Signed-By:' /etc/apt/sources.list.d/debian.sources | head -n 1 | awk '{print $2}')"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
    "${uri:-http://deb.debian.org/debian}" "${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}" >"$sources"
  echo "added bookworm-backports to apt's sources ($sources)"
fi

# Installed from backports already (Mesa 25): nothing to do.
mesa="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
if [ -z "$mesa" ] || dpkg --compare-versions "$mesa" lt 25 || ! dpkg-query -W libvulkan1 >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
  mesa="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
fi
dpkg --compare-versions "$mesa" ge 25 || { echo "mesa-vulkan-drivers $mesa is older than 25: Dawn refuses its lavapipe" >&2; exit 1; }
test -f /usr/share/vulkan/icd.d/lvp_icd.json || { echo "no lavapipe ICD manifest after installing mesa-vulkan-drivers" >&2; exit 1; }
echo "mesa-vulkan-drivers $mesa, libvulkan1 $(dpkg-query -W -f='${Version}' libvulkan1): lavapipe at /usr/share/vulkan/icd.d/lvp_icd.json"
