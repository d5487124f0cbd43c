#!/usr/bin/env bash
# Installs SwiftShader, Google's CPU Vulkan implementation, when it is missing, and prints its ICD
# file. Usage: VK_ICD_FILENAMES=$(bash scripts/setup-swiftshader.sh) WGPU_BACKEND=vulkan cargo test ...
# Debian ships it in `chromium-common` (not `chromium`); only the package's files are unpacked
# (`apt-get download` + `dpkg-deb -x`, nothing installed, no Chromium dependencies), into
# $SWIFTSHADER_DIR (default /opt/swiftshader). Its ICD json works as shipped: it names the library
# by a path relative to itself. SwiftShader reports subgroup size 4, no f16, 256 invocations per
# workgroup and a 256-byte storage offset alignment: the WebGPU-like limits CI checks against.
set -euo pipefail
DIR=${SWIFTSHADER_DIR:-/opt/swiftshader}
icd() {
  local f
  for f in "$DIR"/usr/lib/chromium/vk_swiftshader_icd.json "$DIR"/usr/lib/*/vk_swiftshader_icd.json; do
    [ -e "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}
if ICD=$(icd); then echo "$ICD"; exit 0; fi
command -v apt-get >/dev/null || { echo "error: SwiftShader is installed from Debian's chromium-common: apt-get not found" >&2; exit 1; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp" # apt-get download runs as the _apt user where it can
export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when the first download fails (an image may ship none).
if ! (cd "$tmp" && apt-get download -qq chromium-common >&2 2>/dev/null); then
  $SUDO apt-get update -qq >&2
  (cd "$tmp" && apt-get download -qq chromium-common >&2)
fi
$SUDO mkdir -p "$DIR"
$SUDO dpkg-deb -x "$tmp"/chromium-common_*.deb "$DIR"
ICD=$(icd) || { echo "error: chromium-common holds no vk_swiftshader_icd.json" >&2; exit 1; }
echo "$ICD"
