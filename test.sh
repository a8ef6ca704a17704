#!/usr/bin/env bash
# Predict the test set with the trained cascade: writes $OUT_DIR/result.txt (validated).
# `bash test.sh --eval` writes the evaluation report on the validation list instead.
# Configuration by environment variables (TEST_DIR, CLASSES, CLIP_VIT, CLIP_RN, CONVNEXT, OUT_DIR,
# SETTINGS, ...; see README.md); arguments go to test.py (see python test.py --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup.sh
source scripts/env.sh
python test.py "$@"
