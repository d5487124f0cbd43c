#!/usr/bin/env bash
# Screenshots of the desktop app's real window for docs/ (docs/app-dark.png, docs/app-light.png):
# the hand-written sample conversation docs/app/sample-conversation.json, continued with one prompt
# answered by the tiny checkpoint in assets/ (random weights: its reply is meaningless text).
# Needs a display or xvfb-run; on a GPU-less machine run `eval "$(bash scripts/setup-vulkan.sh)"` first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features app --bin zhinao-chat
run=(); [ -n "${DISPLAY:-}" ] || run=(xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp")
for theme in dark light; do
  data=$(mktemp -d)
  mkdir -p "$data/conversations"
  cp docs/app/sample-conversation.json "$data/conversations/sample.json"
  "${run[@]}" target/release/zhinao-chat --model assets/tiny-zhinao --data-dir "$data" --conversation sample \
    --lang zh --theme "$theme" --size 1100x760 --prompt "谢谢！再用一句话总结一下。" --max-new-tokens 40 \
    --screenshot "docs/app-$theme.png" --exit-after-reply --timeout 300
  rm -rf "$data"
done
