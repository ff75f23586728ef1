#!/usr/bin/env bash
# Re-resolve the test environment from requirements/*.in into requirements/constraints.txt (a maintainer task).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -c requirements/torch.txt -r requirements/torch.txt -r requirements/test.in
{ echo "# Exact versions of the whole test environment (pip freeze of requirements/test.in + requirements/torch.txt)."
  echo "# Every pip call of the setup passes this file with -c; regenerate with scripts/lock.sh."
  "$tmp/venv/bin/pip" freeze --exclude-editable | sort; } > requirements/constraints.txt
rm -rf "$tmp"
