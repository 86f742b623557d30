"""Where a training step's peak memory goes: the process's peak RSS after each stage of one step.

One BPO step in the order a run takes it: load the model, add K LoRA members and merge them into
the behavior adapter, sample B prompts x 2 (``sampling.fold_adapter`` on or off), the reference
pass, then forward + backward + AdamW of every member over ``train.micro_batch`` prompts at a time.
Each variant runs in a fresh process (peak RSS only grows within one), so the rows are comparable.

Run: .venv/bin/python benchmarks/memory.py [--task tldr-local --batch 8 --tokens 64] [--out docs/benchmarks/memory.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from common import publish  # benchmarks/common.py (scripts run from this folder)

STAGES = ("python + torch", "model loaded", "members + merge", "sampled", "reference", "update")
VARIANTS = {  # name: (fold_adapter, micro_batch; 0 = all B at once)
    "micro-batch 1, adapter folded (bpo's CPU default)": (True, 1),
    "micro-batch 1, adapter unfolded": (False, 1),
    "micro-batch 4, adapter folded": (True, 4),
    "whole step at once, adapter folded": (True, 0),
}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(a: argparse.Namespace, fold: bool, micro: int) -> list[float]:
    import torch
    from peft import LoraConfig

    from bpo.config import load_config
    from bpo.data import load_source
    from bpo.model.ensemble import Ensemble
    from bpo.model.logprobs import build_shared_batch
    from bpo.model.policy import load_policy
    from bpo.model.sampling import HFBackend

    peaks = [peak_mib()]
    cfg = load_config(a.task)
    policy = load_policy(a.model, "cpu", "float32")
    peaks.append(peak_mib())
    records = load_source(cfg.data, "train", a.batch, policy.tokenizer)
    ids = [policy.encode_prompt(r.prompt) for r in records]
    ens = Ensemble.create(policy.model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules="all-linear"), a.k)
    ens.disable_dropout()
    ens.merge("behavior")
    peaks.append(peak_mib())
    params = replace(cfg.sampling, max_new_tokens=a.tokens, batch_size=a.batch, fold_adapter=fold)
    groups = HFBackend(policy, ens).generate(ids, 2, params, "behavior", True, [r.id for r in records])
    peaks.append(peak_mib())
    size, pad = micro or a.batch, policy.tokenizer.pad_token_id
    batches = [
        build_shared_batch(ids[i : i + size], [[c.token_ids for c in g] for g in groups[i : i + size]], pad)
        for i in range(0, a.batch, size)
    ]
    with torch.no_grad():
        refs = [ens.logps("behavior", b)[0] for b in batches]
    peaks.append(peak_mib())
    for name in ens.members:
        opt = torch.optim.AdamW(ens.member_parameters(name), lr=1e-4)
        for b, ref in zip(batches, refs):
            summed, _ = ens.logps(name, b, grad=True)
            (-(summed - ref).sum() / a.batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peaks.append(peak_mib())
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="tldr-local")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8, help="B: prompts, 2 samples each")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--k", type=int, default=2, help="ensemble members")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        fold, micro = json.loads(a.worker)
        print(json.dumps(worker(a, fold, micro)))
        return
    rows = ["| variant | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for name, spec in VARIANTS.items():
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", json.dumps(spec)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: {name} failed:\n{done.stderr[-2000:]}")
        peaks = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(f"| {name} | " + " | ".join(f"{p / 1024:.2f}" for p in peaks) + " |")
        print(rows[-1], flush=True)
    import torch

    publish(
        "Peak memory of one step, stage by stage",
        f"`.venv/bin/python benchmarks/memory.py --task {a.task} --model {a.model} --batch {a.batch} --tokens "
        f"{a.tokens} --rank {a.rank} --k {a.k}` on {platform.machine()}, torch {torch.__version__}, fp32: peak "
        f"RSS (GB) of the process after each stage of one BPO step ({a.batch} prompts x 2 samples x up to "
        f"{a.tokens} new tokens, K = {a.k} members of LoRA r {a.rank} on all linear layers).",
        [
            *rows,
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
