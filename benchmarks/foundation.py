"""Memory of the LoRA ensemble and speed of response-only log-probs, on SmolLM2-135M (CPU, fp32).

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

    from bpo.ensemble import Ensemble
    from bpo.models import load_policy

    before = rss_mib()
    policy = load_policy("smollm2-135m-instruct", device="cpu")
    base = rss_mib()
    if k:
        ens = Ensemble.create(policy.model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"), k)
        ens.merge("behavior")  # snapshot 1: the behavior model (exact merge, rank K*r)
        ens.snapshot("behavior", "sft")  # snapshot 2: the SFT reference
    print(json.dumps({"python": before, "base": base, "total": rss_mib()}))


def time_logps(repeats: int) -> dict[str, float]:
    from bpo.losses import build_batch, sequence_logps
    from bpo.models import load_policy

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
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
