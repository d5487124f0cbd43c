#!/usr/bin/env bash
# Installs a Vulkan driver when none is present (Mesa's lavapipe, a software GPU, on Debian/Ubuntu)
# and prints the environment that pins it. Usage: eval "$(bash scripts/setup-vulkan.sh)"
set -euo pipefail
ICD=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
has_icd() { for f in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; do [ -e "$f" ] && return 0; done; return 1; }
if ! has_icd; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >&2
fi
rt=$(mktemp -d); chmod 700 "$rt"
echo "export XDG_RUNTIME_DIR=$rt"
# Without a GPU, pin lavapipe and Vulkan: wgpu would otherwise fall back to GL silently.
if [ -e "$ICD" ] && ! ls /usr/share/vulkan/icd.d/ | grep -qv -e lvp -e intel -e radeon; then
  echo "export WGPU_BACKEND=vulkan VK_ICD_FILENAMES=$ICD"
fi
