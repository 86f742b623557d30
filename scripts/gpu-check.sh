#!/usr/bin/env bash
# The GPU check: one command that finishes within about 8 minutes on one GPU and leaves its results
# in a folder. Usage:
#   bash scripts/gpu-check.sh [OUT]           on the GPU machine: CUDA, bf16 (OUT: gpu-check/)
#   bash scripts/gpu-check.sh --smoke [OUT]   here, on CPU with tiny shapes (the test suite runs it)
# 1. every bpo compare method (offline DPO, online DPO with the SFT reference, BPO F = 2, BPO F = T)
#    trains and evaluates end to end (tiny-random-llama, built from a config: nothing to download);
# 2. benchmarks/gpu_step.py at the paper's scale: Gemma-2-2B shapes with random weights, K = 5,
#    LoRA r 256, 16 prompts x 2 x 128 tokens: s/step by part, peak memory, MFU;
# 3. benchmarks/sampler_logps.py in fp32 and bf16 on CUDA: the model that samples is the behavior
#    model that is the reference (adapter unfolded in bf16; gaps against the dtype's own rounding).
# The engine backends are not part of it: llama.cpp is built for CPU here, and no vLLM is on the
# GPU machine. Python packages that machine lacks travel as wheels in .gpu/wheels
# (bash scripts/gpu-wheels.sh fills it; carry it) and are installed to /tmp/site.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
OUT=$(realpath -m "${1:-gpu-check}")
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! $PY -c "import bpo.cli, bpo.train.loop" >/dev/null 2>&1; then
  [ -d .gpu/wheels ] || { echo "error: bpo cannot be imported here and .gpu/wheels is missing; run bash scripts/gpu-wheels.sh and carry .gpu" >&2; exit 2; }
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
$PY - <<'PY' >"$OUT/machine.txt"
import platform, torch, transformers, peft
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"{gpu}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"python {platform.python_version()}")
PY
cat "$OUT/machine.txt"
if [ $smoke = 1 ]; then
  device=(device=cpu model.dtype=float32)
  step=(--device cpu --dtype float32 --model random:tiny --prompts 2 --tokens 4 --k 2 --rank 4 --steps 2)
  logps=(--device cpu --prompts 2 --tokens 4)
else
  device=(device=cuda model.dtype=bfloat16)
  step=(--device cuda --dtype bf16 --model random:gemma2-2b --prompts 16 --tokens 128 --k 5 --rank 256 --steps 3)
  logps=(--device cuda --prompts 16 --tokens 40)
fi
tiny=(model.name=tiny-random-llama train.steps=4 train.batch_size=4 sampling.max_new_tokens=12 sft.seeds=[0,1]
  sft.epochs=1 sft.batch_size=4 data.sft_examples=8 data.eval_examples=8 lora.r=4 lora.alpha=8 train.lr=5e-3
  "sft_dir=$OUT/e2e/sft" "judge.cache=$OUT/e2e/judge-cache.jsonl")
started=$SECONDS
$PY -m bpo.cli compare quickstart "${device[@]}" "${tiny[@]}" --out "$OUT/e2e" --seeds 0 \
  --methods offline-dpo,online-dpo-sft,bpo-f2,bpo-fT >"$OUT/e2e.log" 2>&1 \
  || { tail -5 "$OUT/e2e.log"; echo "error: the end-to-end runs failed; log: $OUT/e2e.log" >&2; exit 2; }
echo "end to end, 4 methods: $((SECONDS - started)) s ($OUT/e2e/report.md)"
started=$SECONDS
(cd benchmarks && $PY gpu_step.py "${step[@]}" --out "$OUT/gpu-step.md") >"$OUT/gpu-step.log" 2>&1 \
  || { tail -5 "$OUT/gpu-step.log"; echo "error: benchmarks/gpu_step.py failed; log: $OUT/gpu-step.log" >&2; exit 2; }
echo "paper-scale step: $((SECONDS - started)) s ($OUT/gpu-step.md)"
started=$SECONDS
(cd benchmarks && $PY sampler_logps.py --model tiny-random-llama "${logps[@]}" --out "$OUT/sampler-logps.md") \
  >"$OUT/sampler-logps.log" 2>&1 \
  || { tail -5 "$OUT/sampler-logps.log"; echo "error: benchmarks/sampler_logps.py failed; log: $OUT/sampler-logps.log" >&2; exit 2; }
echo "sampler vs teacher-forced, fp32 and bf16: $((SECONDS - started)) s ($OUT/sampler-logps.md)"
