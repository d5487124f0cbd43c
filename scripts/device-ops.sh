#!/usr/bin/env bash
# Run on a lent NVIDIA machine from the repo root (see tools/parity/README.md): unpack the carried
# Vulkan loader (.gl/*.deb) and binaries (.bin/bin.tar.xz: the zhinao CLI and GPU test binaries
# built on the development machine), list adapters, run the GPU tests and `zhinao bench ops`.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
ldconfig -p | grep -q libvulkan.so.1 || { echo "no libvulkan.so.1"; exit 1; }
mkdir -p /tmp/b && tar -C /tmp/b -xJf .bin/bin.tar.xz
mkdir -p /work && ln -sfn "$PWD" /work/main   # the test binaries look for assets under /work/main
export XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
if ! /tmp/b/zhinao devices >/dev/null 2>&1 || ! /tmp/b/zhinao devices 2>&1 | grep -qi nvidia; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
/tmp/b/zhinao devices 2>&1 | cut -c1-400
export WGPU_BACKEND=vulkan
for t in shaders ops_matmul ops_matmul_q4 ops_attention ops_norm ops_rope ops_elementwise ops_embedding ops_softmax ops_sample model_zhinao model_bert model_reranker; do
  [ -x /tmp/b/$t ] || continue
  echo "== $t"; timeout 120 /tmp/b/$t 2>&1 | grep -E "^test result|panicked|FAILED|nmse" | head -5
done
echo "== bench ops"; timeout 240 /tmp/b/zhinao bench ops --iters 20 2>&1
echo "== bench embed"; timeout 120 /tmp/b/zhinao bench embed 2>&1 | tail -3
echo "== bench rerank"; timeout 120 /tmp/b/zhinao bench rerank 2>&1 | tail -3
