#!/usr/bin/env bash
# Screenshot of TensorBoard's Scalars tab for LOGDIR, showing the tags matching FILTER (a regex),
# with headless Chromium (Debian: apt-get install chromium). Made docs/tensorboard_step_curves.png:
#   scripts/tensorboard_screenshot.sh runs/quickstart/rupq docs/tensorboard_step_curves.png \
#       'step/(train_target_loss|quant_vars/layer1.0.conv1.*/step)'
set -euo pipefail
LOGDIR=$1 OUT=$2 FILTER=$3 PORT=${PORT:-6077}
tensorboard --logdir "$LOGDIR" --port "$PORT" --host localhost >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
for _ in $(seq 60); do curl -sf "http://localhost:$PORT/" >/dev/null && break; sleep 1; done
ENCODED=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$FILTER")
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,560 \
  --virtual-time-budget=20000 --screenshot="$OUT" "http://localhost:$PORT/#scalars&tagFilter=$ENCODED" 2>/dev/null
