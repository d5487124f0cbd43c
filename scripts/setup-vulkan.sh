#!/usr/bin/env bash
# Installs a Vulkan driver when none is present (Mesa's lavapipe, a software GPU, on Debian/Ubuntu)
# and prints the environment that pins it. Usage: eval "$(bash scripts/setup-vulkan.sh)"
# `bash scripts/setup-vulkan.sh --lavapipe-icd` prints the installed lavapipe ICD file (whatever the
# architecture: lvp_icd.x86_64.json, lvp_icd.aarch64.json, ...) and fails when there is none.
set -euo pipefail
ICD_DIRS="/usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d"
# The lavapipe ICD: the one named for this machine's architecture if present, else any.
lavapipe_icd() {
  local arch f
  arch=$(uname -m)
  for d in $ICD_DIRS; do
    [ -e "$d/lvp_icd.$arch.json" ] && { echo "$d/lvp_icd.$arch.json"; return 0; }
  done
  for d in $ICD_DIRS; do
    for f in "$d"/lvp_icd*.json; do [ -e "$f" ] && { echo "$f"; return 0; }; done
  done
  return 1
}
if [ "${1:-}" = "--lavapipe-icd" ]; then lavapipe_icd; exit; fi
has_icd() { for d in $ICD_DIRS; do for f in "$d"/*.json; do [ -e "$f" ] && return 0; done; done; return 1; }
if ! has_icd; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >&2
fi
rt=$(mktemp -d); chmod 700 "$rt"
echo "export XDG_RUNTIME_DIR=$rt"
# Without a GPU (only Mesa's lavapipe and its hardware drivers' ICDs installed), pin lavapipe and
# Vulkan: wgpu would otherwise fall back to GL silently.
others=$(for d in $ICD_DIRS; do ls "$d" 2>/dev/null; done | grep -v -e lvp -e intel -e radeon || true)
if ICD=$(lavapipe_icd) && [ -z "$others" ]; then
  echo "export WGPU_BACKEND=vulkan VK_ICD_FILENAMES=$ICD"
fi
