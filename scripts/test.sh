#!/usr/bin/env bash
# The test command: sets up the pinned environment and a real ComfyUI 0.3.75 if needed, then runs
#   tests/core  (lyco_core against lycoris-lora and peft; no ComfyUI)
#   tests/host  (the pack inside a real ComfyUI, in-process and over HTTP)
#   tests/browser (the pack's frontend in Debian chromium via playwright, on a real ComfyUI server)
# in separate pytest processes (our nodes/ package and ComfyUI's nodes.py must never share a process).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python tools/comfyui_env.py || exit 1
status=0
for suite in tests/core tests/host tests/browser; do
  echo "=== pytest $suite"
  .venv/bin/python -m pytest "$suite" -q -p no:cacheprovider "$@"
  rc=$?
  if [ $rc -eq 5 ]; then
    echo "error: $suite collected no tests"; status=1
  elif [ $rc -ne 0 ]; then
    status=1
  fi
done
exit $status
