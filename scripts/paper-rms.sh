#!/usr/bin/env bash
# The proxy (annotator) and gold (judge) reward models of the paper's tasks on ../shared/data, made
# independent: each task's prompts are split once (--split-seed 0) into two parts with no prompt in
# common, the proxy trains on part 1 from init seed 0, the gold on part 2 from init seed 1, and neither
# sees an evaluation prompt (--exclude the test split). SmolLM2-135M backbone, LoRA on the top 4 of its
# 30 blocks, 2 epochs (CPU-sized; docs/results/hh-harmless/). Each model lands in runs/rm/<task>-<role>;
# bpo train refuses a proxy/gold pair that shares a training prompt or an initialisation.
# `bash scripts/paper-rms.sh hh-harmless` (or tldr) makes one task's models only. A model already there is
# kept; one saved without its held-out scores (heldout_scores.jsonl) is measured again, not retrained.
set -euo pipefail
cd "$(dirname "$0")/.."
only=${1:-all}
DATA=${BPO_SHARED_DATA:-../shared/data}
BPO=${BPO:-.venv/bin/bpo}
common=(--model smollm2-135m-instruct --top-layers 4 --lr 3e-4 --epochs 2 --batch-size 8 --holdout 0.2 --split-seed 0)
judge() {  # judge OUT PAIRS ARGS...: train OUT, or measure it again
  local out=$1
  shift
  if [ ! -f "$out/rm.json" ]; then
    "$BPO" rm "$@" --out "$out" "${common[@]}"
  elif [ ! -f "$out/heldout_scores.jsonl" ]; then
    "$BPO" rm "$@" --out "$out" "${common[@]}" --measure-only
  fi
}
for role in proxy:1/2:0 gold:2/2:1; do
  IFS=: read -r name part seed <<< "$role"
  if [ "$only" = all ] || [ "$only" = hh-harmless ]; then
    # HH turns rewritten as the BPO splits write them ("user: ... assistant: "), the prompts the policy sees;
    # every prompt of the splits is among these pairs: the test prompts (evaluation) are left out
    judge "runs/rm/hh-harmless-$name" "$DATA/hh-rlhf/harmless-base-test.jsonl.gz" --part "$part" --seed "$seed" \
      --max-length 256 --dialogue plain --exclude "$DATA/bpo-splits/hh-harmless/test.jsonl"
  fi
  if [ "$only" = all ] || [ "$only" = tldr ]; then
    # TL;DR: the judged pairs are on the dev split's posts (989 of 1000), none on test (the eval prompts)
    judge "runs/rm/tldr-$name" "$DATA/tldr-judged/oai1b_judged.csv" --part "$part" --seed "$seed" --max-length 384 \
      --exclude "$DATA/bpo-splits/tldr/test.jsonl"
  fi
done
