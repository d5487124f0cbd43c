#!/usr/bin/env bash
# The one command for the lent GPU machine (H100/H200), run from the repo root:
#
#   run(command="bash tools/parity/device_run.sh", carry=[".gl", ".bin"], timeout_s=600)
#
# Needs: .gl/*.deb (Vulkan loader, see the device README), .bin/zhinao or .bin/bin.tar.xz holding ./zhinao (an
# x86-64 release build of the engine, copied there: `mkdir -p .bin && cp target/release/zhinao .bin/`; .bin/ is git-excluded), python3 with torch +
# transformers + safetensors + numpy (present on the machine) and tiktoken (used by the test vocabulary; carry it
# as a wheel in .whl/ if missing: see tools/parity/README.md).
# Writes $OUT/report.md (+ $OUT/parity/{report.md,results.json,log.txt}). The whole run stays under 9 minutes:
# run.py gets --deadline (later steps are skipped and recorded, not crashed) and a hard `timeout`; report.md is
# rewritten after every step, so even a killed run leaves one.
#
# Knobs (environment): LAYERS=N (real widths with N decoder layers; default: the published 32/24),
# DEADLINE (seconds for run.py, default 470), MODELS (default 7b,7b-int4,reranker,bert), EXTRA (more run.py args).
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/parity-out}
mkdir -p "$OUT/parity"
export PYTHONUNBUFFERED=1

if ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  echo "WARNING: libvulkan.so.1 not found by ldconfig -p (carry .gl with libvulkan1_*.deb)" | tee -a "$OUT/parity/log.txt"
fi

ZHINAO=${ZHINAO:-.bin/zhinao}
if [ ! -x "$ZHINAO" ] && [ -f .bin/bin.tar.xz ]; then      # a carried tarball of release binaries
  mkdir -p /tmp/zbin && tar xJf .bin/bin.tar.xz -C /tmp/zbin && ZHINAO=/tmp/zbin/zhinao
fi
[ -x "$ZHINAO" ] || ZHINAO=target/release/zhinao
if [ ! -x "$ZHINAO" ]; then
  echo "ERROR: no engine binary (.bin/zhinao or target/release/zhinao)" | tee "$OUT/report.md"; exit 1
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
if ! timeout 60 "$ZHINAO" devices 2>&1 | grep -qi nvidia; then
  echo "no NVIDIA adapter with the default ICDs: setting VK_DRIVER_FILES"
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
timeout 60 "$ZHINAO" devices 2>&1 | head -4
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

LAYER_ARGS=""
[ -n "${LAYERS:-}" ] && LAYER_ARGS="--layers $LAYERS"
ELAPSED=$(( $(date +%s) - T0 ))
DEADLINE=${DEADLINE:-$(( 470 - ELAPSED ))}
HARD=$(( 525 - ELAPSED ))
echo "setup took ${ELAPSED}s; run.py deadline ${DEADLINE}s, hard limit ${HARD}s"
timeout -k 5 "$HARD" python3 tools/parity/run.py --zhinao "$ZHINAO" --device cuda --shapes real --bench \
  --models "${MODELS:-7b,7b-int4,reranker,bert}" --out "$OUT/parity" --work /tmp/parity-work \
  --deadline "$DEADLINE" $LAYER_ARGS ${EXTRA:-} 2>&1 | tail -c 200000 > "$OUT/parity/stdout.txt"
RC=${PIPESTATUS[0]}
cp "$OUT/parity/report.md" "$OUT/report.md" 2>/dev/null || echo "no report written (rc $RC)" > "$OUT/report.md"
echo "run.py rc $RC; total $(( $(date +%s) - T0 ))s"
tail -n 40 "$OUT/parity/log.txt" 2>/dev/null
