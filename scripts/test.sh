#!/usr/bin/env bash
# The test command: sets up the pinned environment, lints (ruff, config in pyproject.toml), then runs
#   tests/core    (lyco_core against lycoris-lora and peft; no ComfyUI)               once
#   tests/host    (the pack inside a real ComfyUI, in-process and over HTTP)           on every host
#   tests/browser (the pack's frontend in Debian chromium via playwright, both renderers) on every host and frontend
# in separate pytest processes (our nodes/ package and ComfyUI's nodes.py must never share a process).
#
# Hosts (tools/comfyui_env.py --list): ComfyUI 0.3.75 (PyPI wheel), 0.33.0 (when ../shared/hosts/ or
# $LYCO_HOSTS_DIR holds its tarball; browser tests also on the newest frontend package), and your own tree:
#   COMFYUI_PATH=~/ComfyUI bash scripts/test.sh        # test the pack against your ComfyUI too
#   LYCO_TEST_HOSTS="0.33.0" bash scripts/test.sh      # only these hosts
# A host that cannot be set up fails the run with the reason. Extra arguments go to every pytest call.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
hosts=${LYCO_TEST_HOSTS:-$(.venv/bin/python tools/comfyui_env.py --list)} || exit 1
status=0
summary=()

run_suite() {  # label, pytest args...
  local label=$1; shift
  echo "=== pytest $label"
  .venv/bin/python -m pytest "$@" -q -p no:cacheprovider
  local rc=$?
  if [ $rc -eq 5 ]; then
    echo "error: $label collected no tests"; rc=1
  fi
  [ $rc -eq 0 ] || status=1
  summary+=("$( [ $rc -eq 0 ] && echo passed || echo FAILED ): $label")
}

echo "=== ruff check, ruff format --check"
if .venv/bin/ruff check . && .venv/bin/ruff format --check .; then
  summary+=("passed: ruff check, ruff format --check")
else
  status=1; summary+=("FAILED: ruff check or ruff format --check (run: .venv/bin/ruff format . && .venv/bin/ruff check .)")
fi
run_suite "tests/core" tests/core "$@"
for host in $hosts; do
  exports=$(.venv/bin/python tools/comfyui_env.py --host "$host")
  if [ $? -ne 0 ] || [ -z "$exports" ]; then
    echo "error: ComfyUI host '$host' could not be set up (reason above)"
    status=1; summary+=("FAILED: host $host could not be set up"); continue
  fi
  (
    eval "$exports"
    summary=()
    run_suite "tests/host on ComfyUI $LYCO_HOST_VERSION ($host)" tests/host "$@"
    run_suite "tests/browser on ComfyUI $LYCO_HOST_VERSION, its own frontend" tests/browser "$@"
    for frontend in $LYCO_FRONTENDS; do
      LYCO_FRONTEND_ROOT=${frontend#*=} \
        run_suite "tests/browser on ComfyUI $LYCO_HOST_VERSION, frontend ${frontend%%=*}" tests/browser "$@"
    done
    printf '%s\n' "${summary[@]}" > .cache/.test-summary-"$host"
    exit $status
  ) || status=1
  [ -f .cache/.test-summary-"$host" ] && mapfile -t -O ${#summary[@]} summary < .cache/.test-summary-"$host"
  rm -f .cache/.test-summary-"$host"
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
