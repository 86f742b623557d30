#!/usr/bin/env bash
# The quickstart grids behind docs/results/claims/ (issue 24), one claim per call, resumable:
#   bash scripts/claims.sh CLAIM SEEDS      e.g. bash scripts/claims.sh rules 0,1,2,3,4
# Each runs `bpo compare quickstart` into runs/claims/CLAIM (finished runs are skipped) and publishes
# the raw files and report to docs/results/claims/CLAIM/grid; seeds added by a later call land beside the
# earlier ones, and `bpo compare quickstart --report-only --out docs/results/claims/CLAIM/grid --methods M
# --seeds ALL` rebuilds the report over all of them. A quickstart run takes 5-7 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
claim=${1:?claim: ordering, rules, ipo, slic, k1, k2, k5}
seeds=${2:?seeds, e.g. 0,1,2,3,4}
BPO=${BPO:-.venv/bin/bpo}
over=()
case "$claim" in
  ordering) methods=offline-dpo,online-dpo-sft,bpo-f2,bpo-fT ;;  # F = 2 vs offline, and the paper's ordering
  rules) methods=offline-dpo,bpo-f2,bpo-fT,tr-dpo-soft,tr-dpo-hard,simpo,simpo-fT ;;  # reference rules users compare
  ipo | slic) methods=offline-dpo,online-dpo-sft,bpo-f2; over=("train.loss=$claim") ;;  # beta 0.1 (the preset's)
  k1) methods=bpo-f2,bpo-fT; over=("sft.seeds=[0]") ;;  # ensemble size K
  k2) methods=bpo-f2,bpo-fT ;;
  k5) methods=bpo-f2,bpo-fT; over=("sft.seeds=[0,1,2,3,4]") ;;
  *) echo "error: unknown claim $claim (ordering, rules, ipo, slic, k1, k2, k5)" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$BPO" compare quickstart "${over[@]}" --methods "$methods" --seeds "$seeds" --out "runs/claims/$claim" \
  --publish "docs/results/claims/$claim/grid"
