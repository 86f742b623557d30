#!/usr/bin/env bash
# The four-method grid of a paper task on ../shared/data with its committed, independent judges:
#   bash scripts/paper-grid.sh hh-harmless 0,1,2      (or tldr)
# The judges are the reward models scripts/paper-rms.sh trains, committed as PEFT adapters in
# docs/results/TASK/judges/{proxy,gold} (rm.json records their split, init seed and accuracy). Runs go to
# runs/compare-TASK (resumable; finished runs are skipped); raw files and the report are published to
# docs/results/TASK/grid, where seeds run by later calls join the earlier ones:
#   bpo compare TASK-local --report-only --out docs/results/TASK/grid --seeds ALL   rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?task: hh-harmless or tldr}
seeds=${2:?seeds, e.g. 0,1,2}
BPO=${BPO:-.venv/bin/bpo}
judges=docs/results/$task/judges
for j in proxy gold; do
  [ -f "$judges/$j/rm.json" ] || { echo "error: no $judges/$j: train it with bash scripts/paper-rms.sh $task and copy runs/rm/$task-$j there" >&2; exit 2; }
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the paper's claims: F = 2 beats offline DPO and matches or beats online DPO with the SFT reference (so that one
# beating F = 2 should not hold); the on-policy ordering
claims=bpo-f2\>offline-dpo,online-dpo-sft\>bpo-f2,online-dpo-sft\>offline-dpo,bpo-fT\>online-dpo-sft
"$BPO" compare "$task-local" "annotator.model=$judges/proxy" "eval.gold=$judges/gold" --seeds "$seeds" \
  --out "runs/compare-$task" --claims "$claims" --publish "docs/results/$task/grid"
