"""bpo's engine backend (sampling.backend=llamacpp) against its hf backend: speed and faithfulness, one invocation.

Speed: a quickstart phase (a preset's training prompts, formatted as bpo formats them, n samples each,
the preset's temperature/top-k/top-p and max new tokens, stop at EOS) through each backend as the
trainer calls it, repeats after a warm-up; the engine's once-per-phase hand-over (merge, convert to
GGUF, start the server) timed apart.

Faithfulness, of the engine's samples to the model:
1. log-probs: the engine's per-token log-prob of each token it sampled against bpo's teacher-forced
   log-prob of the same token (the numbers a DPO reference is made of);
2. distribution: first tokens, ``--draws`` samples per prompt from each backend, against the model's
   own next-token distribution after the same top-k/top-p: total variation distance, beside the
   distance an exact sampler shows at the same number of draws (simulated from the model's
   probabilities, 200 times: its median and 95th percentile);
3. reproducibility: the same keys asked again give the same tokens.

Needs the engine: bash scripts/engine.sh.
Run: .venv/bin/python benchmarks/engine_backend.py [--prompts 64 --n 2 --repeats 3 --draws 2000]
     [--out docs/benchmarks/engine.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import phase_arguments, publish  # benchmarks/common.py (scripts run from this folder)

from bpo.config import load_config
from bpo.data import load_source
from bpo.model.policy import load_policy
from bpo.model.sampling import make_backend


def model_probs(policy, prompt: list[int], s) -> torch.Tensor:
    """The next-token distribution the sampler should draw from: softmax(logits / T) after top-k and top-p."""
    with torch.no_grad():
        logits = policy.model(torch.tensor([prompt])).logits[0, -1].double() / s.temperature
    if s.top_k:
        logits[logits < logits.topk(s.top_k).values[-1]] = float("-inf")
    probs = torch.softmax(logits, -1)
    if s.top_p < 1:
        values, order = probs.sort(descending=True)
        drop = values.cumsum(0) - values > s.top_p  # keep the smallest set whose mass reaches top_p
        probs[order[drop]] = 0
        probs /= probs.sum()
    return probs


def tv(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - probs).abs().sum())


def first_tokens(backend, prompt, s, draws: int, tag: str) -> torch.Tensor:
    groups = backend.generate([prompt], draws, replace(s, max_new_tokens=1), None, False, [tag])
    return torch.tensor([c.token_ids[0] for c in groups[0]])


def teacher_forced(policy, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = policy.model(torch.tensor([prompt + tokens])).logits[0].double()
    return torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def main() -> None:
    parser = phase_arguments(argparse.ArgumentParser())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draws", type=int, default=2000, help="first-token samples per prompt, per backend")
    parser.add_argument("--draw-prompts", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()

    backend_cfg = load_config(a.task, ["sampling.backend=llamacpp"])
    s = replace(backend_cfg.sampling, batch_size=a.prompts)
    policy = load_policy(a.model, "cpu", "float32", backend_cfg.model.chat_template)
    records = load_source(backend_cfg.data, "train", a.prompts, policy.tokenizer)
    ids = [policy.encode_prompt(backend_cfg.data.prompt_template.format(prompt=r.prompt)) for r in records]
    keys = [r.id for r in records]
    hf, engine = make_backend(policy), make_backend(policy, None, backend_cfg)
    threads = torch.get_num_threads()

    started = time.perf_counter()
    engine.serve(None)  # the hand-over a phase pays once: merged weights written, converted, served
    handover = time.perf_counter() - started
    speed, samples = {}, {}
    for name, backend in (("hf", hf), ("llamacpp", engine)):
        backend.generate(ids[:8], a.n, s, None, True, [f"warm{k}" for k in keys[:8]])
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            samples[name] = backend.generate(ids, a.n, s, None, True, keys)
            times.append(time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for g in samples[name] for c in g)
        speed[name] = (min(times), statistics.median(times), tokens)
        print(name, speed[name], flush=True)

    # 1. log-probs of the engine's own samples
    gaps, missing, count = [], 0, 0
    for prompt, group in zip(ids, samples["llamacpp"]):
        for c in group:
            count += 1
            if c.engine_logps is None:
                missing += 1
                continue
            gaps.append((teacher_forced(policy, prompt, c.token_ids) - torch.tensor(c.engine_logps).double()).abs())
    gap = torch.cat(gaps)
    again = engine.generate(ids, a.n, s, None, False, keys)
    same = sum(x.token_ids == y.token_ids for g, h in zip(again, samples["llamacpp"]) for x, y in zip(g, h))

    # 2. first-token distributions
    rows = []
    for i, prompt in enumerate(ids[: a.draw_prompts]):
        probs = model_probs(policy, prompt, s)
        gen = torch.Generator().manual_seed(i)
        null = sorted(
            tv(
                torch.bincount(torch.multinomial(probs, a.draws, True, generator=gen), minlength=len(probs)).double(),
                probs,
            )
            for _ in range(200)
        )  # noqa: E501
        cells = [f"prompt {i + 1} ({int((probs > 0).sum())} tokens possible)"]
        for backend in (hf, engine):
            drawn = first_tokens(backend, prompt, s, a.draws, f"draw{i}")
            cells.append(f"{tv(torch.bincount(drawn, minlength=len(probs)).double(), probs):.3f}")
        cells.append(f"{null[100]:.3f} / {null[189]:.3f}")
        rows.append("| " + " | ".join(cells) + " |")

    hf_rate = speed["hf"][2] / speed["hf"][1]
    table = [
        "| backend | min s | median s | new tokens | tokens/s (median) | vs hf |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("hf", "hf (transformers generate, prefill once)"), ("llamacpp", "llamacpp (llama-server)")):
        lo, med, tokens = speed[name]
        rate = tokens / med
        table.append(f"| {label} | {lo:.2f} | {med:.2f} | {tokens} | {rate:.0f} | {rate / hf_rate:.2f}x |")
    where = f"{platform.machine()}, {threads} threads, torch {torch.__version__}"
    publish(
        "The engine backend: speed and faithfulness",
        f"`.venv/bin/python benchmarks/engine_backend.py --task {a.task} --prompts {a.prompts} --n {a.n} --repeats "
        f"{a.repeats} --draws {a.draws}` on {where}: {a.model} in fp32 (the engine: an f32 GGUF, f32 KV cache, "
        f"no flash attention, {engine.engine.concurrency} slots); {a.prompts} {a.task} training prompts x {a.n} "
        f"samples x up to {s.max_new_tokens} new tokens, temperature {s.temperature}, top-k {s.top_k}, top-p "
        f"{s.top_p}; {a.repeats} timed runs each after a warm-up.",
        [
            "## Sampling a phase",
            "",
            *table,
            "",
            f"The engine's hand-over, paid once a phase (merged weights written, converted to GGUF, server started): "
            f"{handover:.1f} s.",
            "",
            "## Log-probs of the engine's samples against bpo's teacher-forced ones",
            "",
            f"{gap.numel()} tokens of {count - missing} samples: |difference| max {gap.max():.2e}, mean "
            f"{gap.mean():.2e}, 99th percentile {gap.quantile(0.99):.2e} nats; {missing} of {count} samples came "
            "without log-probs for every token (llama.cpp leaves out tokens that end inside a UTF-8 character). "
            "The trainer never uses the engine's numbers: it teacher-forces the reference.",
            "",
            f"Asked again with the same keys, {same} of {count} samples were the same tokens (up to llama.cpp's "
            "rounding, which depends on how requests are batched: a draw that close to a token boundary can flip).",
            "",
            "## First tokens against the model's distribution",
            "",
            f"Total variation distance between {a.draws} drawn first tokens and the model's next-token "
            "distribution (after top-k/top-p); an exact sampler's distance at the same draws, simulated 200 times, "
            "as median / 95th percentile.",
            "",
            "| prompt | hf | llamacpp | exact sampler |",
            "| --- | ---: | ---: | ---: |",
            *rows,
        ],
        a.out,
    )
    engine.close()


if __name__ == "__main__":
    main()
