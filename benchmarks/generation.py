"""What each generation speed-up buys: a phase's sampling with and without them, on one model.

A phase samples n responses per prompt from the frozen behavior adapter (rank K*r: the merge of
K members). Two speed-ups in ``bpo.model.sampling`` use that it is frozen and shared:
``prefill_once`` (each prompt runs once, its KV cache repeated for the n samples) and
``fold_adapter`` (the adapter folded into a copy-restored base weight, so decoding has no LoRA
matmuls). Each variant samples the same prompts with the same keys; the script checks that all
four give the same tokens and times them, one after the other, in one process.

Run: .venv/bin/python benchmarks/generation.py [--prompts 8 --n 2 --tokens 64 --rank 8 --members 2]
     [--task tldr-local] [--out docs/benchmarks/generation.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import publish  # benchmarks/common.py (scripts run from this folder)
from peft import LoraConfig

from bpo.config import load_config
from bpo.data import load_source
from bpo.model.ensemble import Ensemble
from bpo.model.policy import load_policy
from bpo.model.sampling import HFBackend

VARIANTS = {  # name: (prefill_once, fold_adapter)
    "plain (every sample prefills, LoRA unfolded)": (False, False),
    "prefill once": (True, False),
    "fold adapter": (False, True),
    "prefill once + fold (default)": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="tldr-local", help="preset whose training prompts are sampled")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of each member")
    parser.add_argument("--members", type=int, default=2, help="K: the behavior adapter has rank K * rank")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant (the best is kept)")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()

    cfg = load_config(a.task)
    policy = load_policy(a.model, a.device, a.dtype)
    records = load_source(cfg.data, "train", a.prompts, policy.tokenizer)
    ids = [policy.encode_prompt(r.prompt) for r in records]
    keys = [r.id for r in records]
    lora = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules="all-linear", lora_dropout=0.0)
    ens = Ensemble.create(policy.model, lora, a.members)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking members: B is not zero
        for m in ens.members:
            for p in ens.member_parameters(m):
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    ens.merge("behavior")
    base = replace(cfg.sampling, max_new_tokens=a.tokens, batch_size=a.prompts)
    backend = HFBackend(policy, ens)
    prompt_tokens = sum(len(x) for x in ids) / len(ids)

    def run(prefill: bool, fold: bool) -> tuple[float, list]:
        params = replace(base, prefill_once=prefill, fold_adapter=fold)
        best, groups = float("inf"), []
        for _ in range(a.repeats):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            groups = backend.generate(ids, a.n, params, "behavior", True, keys)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best, [c.token_ids for g in groups for c in g]

    run(True, True)  # warm-up: first calls allocate and initialise
    rows = [
        "| variant | seconds | new tokens/s | vs plain | same tokens as plain |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    plain_s, plain_tokens = None, None
    for name, (prefill, fold) in VARIANTS.items():
        seconds, tokens = run(prefill, fold)
        if plain_s is None:
            plain_s, plain_tokens = seconds, tokens
        new = sum(len(t) for t in tokens)
        same = "yes" if tokens == plain_tokens else f"no ({sum(x != y for x, y in zip(tokens, plain_tokens))} differ)"
        rows.append(f"| {name} | {seconds:.2f} | {new / seconds:.1f} | {plain_s / seconds:.2f}x | {same} |")
        print(rows[-1], flush=True)
    command = (
        f"`.venv/bin/python benchmarks/generation.py --task {a.task} --model {a.model} --device {a.device} "
        f"--dtype {a.dtype} --prompts {a.prompts} --n {a.n} --tokens {a.tokens} --rank {a.rank} "
        f"--members {a.members}`"
    )
    where = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if a.device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    publish(
        "Generation speed-ups, same samples",
        f"{command} on {where}: {a.prompts} {a.task} training prompts (mean {prompt_tokens:.0f} tokens) x "
        f"{a.n} samples x up to {a.tokens} new tokens, behavior adapter of rank {a.members} x {a.rank} on "
        f"every linear layer, best of {a.repeats} runs after a warm-up.",
        [
            *rows,
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
