#!/usr/bin/env bash
# The main command of the README: sets everything up, then runs the whole pipeline
# (process -> train.sh -> test.sh -> evaluation). Without DATA_DIR it runs on a generated demo
# dataset with small random-weight checkpoints, converted from the upstream formats.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh"
# shellcheck source=scripts/env.sh
source "$here/env.sh"
cd "$FEWSHOT_ROOT"
exec python -m pipeline.main "$@"
