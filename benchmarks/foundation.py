"""Memory of the LoRA ensemble, speed of response-only log-probs and of the shared-prompt pair
pass, on SmolLM2-135M (CPU, fp32).

Run: .venv/bin/python benchmarks/foundation.py [--out docs/benchmarks/foundation.md]
Each memory figure is measured in a fresh subprocess so earlier allocations do not count.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure_memory(k: int, r: int) -> None:
    from peft import LoraConfig

    from bpo.model.ensemble import Ensemble
    from bpo.model.policy import load_policy

    before = rss_mib()
    policy = load_policy("smollm2-135m-instruct", device="cpu")
    base = rss_mib()
    if k:
        ens = Ensemble.create(policy.model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"), k)
        ens.merge("behavior")  # snapshot 1: the behavior model (exact merge, rank K*r)
        ens.snapshot("behavior", "sft")  # snapshot 2: the SFT reference
    print(json.dumps({"python": before, "base": base, "total": rss_mib()}))


def time_logps(repeats: int) -> dict[str, float]:
    from bpo.model.logprobs import build_batch, sequence_logps
    from bpo.model.policy import load_policy

    policy = load_policy("smollm2-135m-instruct", device="cpu")
    g = torch.Generator().manual_seed(0)
    vocab = policy.model.config.vocab_size
    prompts = [torch.randint(0, vocab, (128,), generator=g).tolist() for _ in range(8)]
    responses = [torch.randint(0, vocab, (128,), generator=g).tolist() for _ in range(8)]
    batch = build_batch(prompts, responses, policy.tokenizer.pad_token_id)  # 8 x 256 tokens, 128 response
    out = {}
    with torch.no_grad():
        for projection in (True, False):
            sequence_logps(policy.model, batch, projection)  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                sequence_logps(policy.model, batch, projection)
                times.append(time.perf_counter() - t)
            out["response_only" if projection else "full_vocab"] = statistics.median(times)
    return out


def time_pair_pass(repeats: int, prompt_len: int, response_len: int, pairs: int = 8) -> dict[str, float]:
    """Forward + backward of one DPO step's policy log-probs under a LoRA member (K=1, r=16).

    plain: each pair is two full rows (prompt + response), so the prompt runs twice.
    shared: the prompt runs once and its KV cache (with its graph) is repeated for both responses.
    """
    from peft import LoraConfig

    from bpo.model.ensemble import Ensemble
    from bpo.model.logprobs import build_batch, build_shared_batch
    from bpo.model.policy import load_policy

    policy = load_policy("smollm2-135m-instruct", device="cpu")
    ens = Ensemble.create(policy.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), 1)
    member = ens.members[0]
    g = torch.Generator().manual_seed(0)
    vocab = policy.model.config.vocab_size
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=g).tolist() for _ in range(pairs)]
    responses = [[torch.randint(0, vocab, (response_len,), generator=g).tolist() for _ in range(2)] for _ in prompts]
    pad = policy.tokenizer.pad_token_id
    batches = {
        "plain": build_batch([p for p in prompts for _ in range(2)], [r for rs in responses for r in rs], pad),
        "shared": build_shared_batch(prompts, responses, pad),
    }
    out = {}
    for name, batch in batches.items():
        times = []
        for i in range(repeats + 1):  # the first is a warm-up
            t = time.perf_counter()
            summed, _ = ens.logps(member, batch, grad=True)
            (summed[0::2] - summed[1::2]).sum().backward()
            if i:
                times.append(time.perf_counter() - t)
            ens.peft.zero_grad(set_to_none=True)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/benchmarks/foundation.md")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--_memory", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory:
        measure_memory(*args._memory)
        return
    rows = []
    for k, r in [(0, 0), (5, 16), (5, 256)]:
        res = subprocess.run([sys.executable, __file__, "--_memory", str(k), str(r)], capture_output=True, text=True)
        mem = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append((k, r, mem))
    t = time_logps(args.repeats)
    shapes = [(128, 40), (512, 64)]  # about the quickstart's shape; TL;DR's longest prompts (the paper filters at 512)
    pair = {shape: time_pair_pass(args.repeats, *shape) for shape in shapes}
    lines = [
        "# Foundation benchmarks",
        "",
        f"Command: `.venv/bin/python benchmarks/foundation.py` ({platform.processor() or platform.machine()}, "
        f"{psutil.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}). "
        "SmolLM2-135M-Instruct, fp32.",
        "",
        "## Resident memory (RSS, MiB)",
        "",
        "| what | RSS after | added over base |",
        "| --- | ---: | ---: |",
    ]
    base = rows[0][2]["base"]
    for k, r, mem in rows:
        what = f"base + K={k} members (r={r}) + 2 snapshots (behavior rank {k * r}, sft)"
        what = "base model alone" if k == 0 else what
        lines.append(f"| {what} | {mem['total']:.0f} | {mem['total'] - base:+.0f} |")
    lines += [
        "",
        "The members and snapshots are LoRA factors on the one base model: no second copy of the base weights.",
        "",
        f"## One log-prob pass, 8 x 256 tokens (128 response tokens per row), median of {args.repeats}",
        "",
        "| LM-head projection | seconds |",
        "| --- | ---: |",
        f"| response positions only | {t['response_only']:.3f} |",
        f"| every position (full logits) | {t['full_vocab']:.3f} |",
        "",
        f"## Policy log-probs of 8 DPO pairs, forward + backward under a LoRA member, median of {args.repeats}",
        "",
        "plain: 16 rows of prompt + response (each prompt runs twice); shared: each prompt runs once and its "
        "KV cache, graph included, is repeated for the two responses (what the trainer does).",
        "",
        "| prompt tokens | response tokens | plain s | shared s | speed-up |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {p} | {r} | {v['plain']:.2f} | {v['shared']:.2f} | {v['plain'] / v['shared']:.2f}x |"
            for (p, r), v in pair.items()
        ],
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
