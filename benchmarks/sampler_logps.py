"""How far the sampler's own log-probs are from the teacher-forced pass, in fp32 and bf16.

BPO's reference is the behavior model, whose log-probs the sampler returns while it decodes; bpo
reuses them instead of a second forward pass, but only where they equal the teacher-forced numbers.
This measures the gap on SmolLM2-135M with a LoRA adapter, the quickstart's prompts and sampling.

Run: .venv/bin/python benchmarks/sampler_logps.py [--out docs/benchmarks/sampler-logps.md]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from common import publish  # benchmarks/common.py (scripts run from this folder)
from peft import LoraConfig

from bpo.config import load_config
from bpo.model.ensemble import Ensemble
from bpo.model.logprobs import build_shared_batch
from bpo.model.policy import load_policy
from bpo.model.sampling import HFBackend
from bpo.tasks.quickstart import QuickstartTask


def gap(dtype: str, prompts: int, tokens: int) -> dict[str, float]:
    cfg = load_config("quickstart")
    policy = load_policy(cfg.model.name, "cpu", dtype)
    ens = Ensemble.create(policy.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B is not zero
        for p in ens.member_parameters("member0"):
            p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    ens.merge("behavior")
    records = QuickstartTask(0).prompts("train", prompts)
    ids = [policy.encode_prompt(r.prompt) for r in records]
    params = cfg.sampling.__class__(max_new_tokens=tokens, temperature=1.0, top_k=50, top_p=1.0, batch_size=prompts)
    groups = HFBackend(policy, ens).generate(ids, 2, params, "behavior", True, [r.id for r in records])
    batch = build_shared_batch(ids, [[c.token_ids for c in g] for g in groups], policy.tokenizer.pad_token_id)
    forced = ens.logps("behavior", batch)[0].double()
    sampled = torch.tensor([c.logp for g in groups for c in g], dtype=torch.float64)
    diff = (sampled - forced).abs()
    return {"max": diff.max().item(), "mean": diff.mean().item(), "rows": len(diff), "mean_logp": forced.mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    rows = [
        "| dtype | sequences | mean log-prob (nats) | mean abs gap (nats) | max abs gap (nats) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for dtype in ("float32", "bfloat16"):
        g = gap(dtype, a.prompts, a.tokens)
        rows.append(f"| {dtype} | {g['rows']} | {g['mean_logp']:.2f} | {g['mean']:.2e} | {g['max']:.2e} |")
        print(rows[-1], flush=True)
    publish(
        "Sampler log-probs vs the teacher-forced pass",
        f"`.venv/bin/python benchmarks/sampler_logps.py --prompts {a.prompts} --tokens {a.tokens}` on "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}: "
        f"SmolLM2-135M-Instruct with a random LoRA (r 16) merged into the behavior adapter, quickstart "
        f"prompts, {a.prompts} prompts x 2 samples x up to {a.tokens} new tokens (temperature 1, top-k 50). "
        "Gap = |summed log-prob returned by the sampler - summed log-prob of a teacher-forced pass|.",
        [
            *rows,
            "",
            "bpo reuses the sampler's numbers as BPO's reference only in fp32; in bf16/fp16 it runs the "
            "teacher-forced pass (`bpo.train.step.reference_logps`), so the loss at a phase start is exactly log 2.",
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
