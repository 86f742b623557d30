#!/usr/bin/env bash
# The quickstart grids behind docs/results/claims/ (issue 24), one claim per call, resumable:
#   bash scripts/claims.sh CLAIM SEEDS      e.g. bash scripts/claims.sh rules 0,1,2,3,4
# Each runs `bpo compare quickstart` (finished runs are skipped) and publishes the raw files and a report to
# docs/results/claims/CLAIM/grid, where seeds added by a later call join the earlier ones; the report says of
# each claim (METHOD>BASELINE) what its paired interval supports, and names the command that rebuilds it.
# Grids on the preset's own settings (ordering, rules, ensemble) share one run folder, runs/claims/default, so a
# method and seed is trained once for all of them; the others (a loss or K changed) have their own.
# A quickstart run takes 5-14 min on 2 CPU cores (the CPU's speed varies between sessions).
set -euo pipefail
cd "$(dirname "$0")/.."
claim=${1:?claim: ordering, rules, ipo, slic, ensemble}
seeds=${2:?seeds, e.g. 0,1,2,3,4}
BPO=${BPO:-.venv/bin/bpo}
over=()
runs=default
# the paper's: F = 2 beats offline DPO; F = 2 matches or beats online DPO with the SFT reference (so that one
# beating F = 2 should not hold); and the on-policy ordering
paper=bpo-f2\>offline-dpo,online-dpo-sft\>bpo-f2
case "$claim" in
  ordering) methods=offline-dpo,online-dpo-sft,bpo-f2,bpo-fT
    claims=$paper,online-dpo-sft\>offline-dpo,bpo-fT\>online-dpo-sft,bpo-fT\>bpo-f2 ;;
  rules) methods=offline-dpo,bpo-f2,bpo-fT,tr-dpo-soft,tr-dpo-hard,simpo,simpo-fT  # reference rules users compare
    claims=tr-dpo-soft\>offline-dpo,tr-dpo-hard\>offline-dpo,simpo\>offline-dpo,bpo-fT\>tr-dpo-soft
    claims=$claims,bpo-fT\>tr-dpo-hard,bpo-f2\>simpo,bpo-fT\>simpo-fT ;;
  ipo | slic) methods=offline-dpo,online-dpo-sft,bpo-f2; over=("train.loss=$claim"); runs=$claim  # beta 0.1
    claims=$paper ;;
  ensemble) methods=bpo-f2-k1,bpo-f2,bpo-f2-k5,bpo-fT-k1,bpo-fT,bpo-fT-k5  # K = 1, 2 (the preset's), 5
    claims=bpo-f2\>bpo-f2-k1,bpo-f2-k5\>bpo-f2-k1,bpo-fT\>bpo-fT-k1,bpo-fT-k5\>bpo-fT-k1 ;;
  *) echo "error: unknown claim $claim (ordering, rules, ipo, slic, ensemble)" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$BPO" compare quickstart "${over[@]}" --methods "$methods" --seeds "$seeds" --out "runs/claims/$runs" \
  --claims "$claims" --publish "docs/results/claims/$claim/grid"
