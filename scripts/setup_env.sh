#!/usr/bin/env bash
# Create or refresh .venv with the pinned test environment: torch 2.14.1 + torchvision 0.29.1 first, then
# ComfyUI 0.3.75's requirements, the reference libraries (lycoris-lora, peft, diffusers) and the test runners.
# Every pip call carries -c requirements/constraints.txt. Idempotent: skips work when the lock is unchanged.
# Also makes sure Debian's chromium is there for the browser tests (apt-get, as root only; never `playwright
# install`, which downloads a browser build from outside).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian chromium for tests/browser"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "[setup] /usr/bin/chromium is missing and this is not root with apt-get: tests/browser will fail;" \
         "install it with: sudo apt-get install -y chromium"
  fi
fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp=.venv/.lyco-env-stamp
want=$(cat requirements/constraints.txt requirements/test.in requirements/torch.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt "$@"; }
echo "[setup] installing torch (pinned)"
pip_install -r requirements/torch.txt
echo "[setup] installing ComfyUI requirements, reference libraries and test tools (pinned)"
pip_install -r requirements/test.in
echo "$want" > "$stamp"
echo "[setup] done"
