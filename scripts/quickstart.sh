#!/usr/bin/env bash
# Set up (if needed) and run the main job: `bpo train` on the embedded quickstart preset.
# Extra arguments go to `bpo train` (e.g. train.phases=1). Each run gets a fresh folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/bpo train quickstart output_dir="runs/quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
