#!/usr/bin/env bash
# The proxy (annotator) and gold (judge) reward models of the paper's tasks on ../shared/data:
# disjoint halves of the human pairs, SmolLM2-135M backbone, LoRA on the top 4 of its 30 blocks
# (CPU-sized; see docs/results/reward-models.md). Each model lands in runs/rm/<task>-<role>.
# `bash scripts/paper-rms.sh hh-harmless` (or tldr) trains one task's models only.
set -euo pipefail
cd "$(dirname "$0")/.."
only=${1:-all}
DATA=${BPO_SHARED_DATA:-../shared/data}
common=(--model smollm2-135m-instruct --top-layers 4 --lr 3e-4 --epochs 1 --batch-size 8 --holdout 0.2 --seed 0)
for role in proxy:1/2 gold:2/2; do
  [ "$only" = all ] || [ "$only" = hh-harmless ] || break
  name=${role%%:*}; part=${role##*:}
  # HH turns rewritten as the BPO splits write them ("user: ... assistant: "), the prompts the policy sees;
  # every prompt of the splits is among these pairs, so the RMs leave them out (no judge has seen an
  # eval prompt's reference, nor the policy's training prompts)
  [ -f "runs/rm/hh-harmless-$name/rm.json" ] || bpo rm "$DATA/hh-rlhf/harmless-base-test.jsonl.gz" \
    --out "runs/rm/hh-harmless-$name" --part "$part" --max-length 256 --dialogue plain \
    --exclude "$DATA/bpo-splits/hh-harmless/dev.jsonl" --exclude "$DATA/bpo-splits/hh-harmless/test.jsonl" "${common[@]}"
done
for role in proxy:1/2 gold:2/2; do
  [ "$only" = all ] || [ "$only" = tldr ] || break
  name=${role%%:*}; part=${role##*:}
  # TL;DR: the judged pairs are on the dev split's posts (989 of 1000), none on test (the eval prompts)
  [ -f "runs/rm/tldr-$name/rm.json" ] || bpo rm "$DATA/tldr-judged/oai1b_judged.csv" --out "runs/rm/tldr-$name" \
    --part "$part" --max-length 384 "${common[@]}"
done
