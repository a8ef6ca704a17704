#!/usr/bin/env bash
# Train the cascade: process.py (when its lists are missing), then train.py. train.py refuses
# lists made from other DATA_DIR/CLASSES/TRAIN_LIST/SHOTS/SEED/VAL_PER_CLASS than the current
# ones (lists/split.json) and says to re-run process.py, whose options only you know.
# Configuration by environment variables (DATA_DIR, CLASSES, CLIP_VIT, CLIP_RN, CONVNEXT, OUT_DIR,
# SETTINGS, ...; see README.md); arguments go to train.py (see python train.py --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup.sh
source scripts/env.sh
lists="${OUT_DIR:-out}/lists/train_4shot.txt"
if [ ! -f "$lists" ]; then
    python process.py ${PROCESS_ARGS:-}
fi
python train.py "$@"
