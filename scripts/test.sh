#!/usr/bin/env bash
# The test command of the README: sets everything up (idempotent) and runs the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `-k inmap`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh" --dev
# shellcheck source=scripts/env.sh
source "$here/env.sh"
cd "$FEWSHOT_ROOT"
exec python -m pytest "$@"
