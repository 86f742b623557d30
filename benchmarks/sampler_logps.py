"""Is the model that samples the model that is BPO's reference? fp32 and bf16, side by side.

BPO's reference is the behavior model. In fp32 bpo folds the behavior adapter into the base weights
while it samples and reuses the sampler's own log-probs as the reference (no second forward pass);
in bf16/fp16 it samples with the adapter unfolded and teacher-forces the reference. This measures,
for each dtype, with the same prompts and per-sample keys:
- bpo's sampler: |its summed log-prob - a teacher-forced pass of the same tokens| per sequence;
- the forward's own noise: the same teacher-forced numbers computed in another batch layout (each
  prompt run once for its responses vs every sequence padded whole), which differ only by rounding;
- folding into the dtype's weights (what bpo did before in bf16, and what the llamacpp and hook
  engines are given): how many sequences come out different with the same keys, and its gap;
- how much of delta-W a fold into the dtype gets wrong (W + delta-W summed in fp32, rounded once);
- the dtype's own rounding: the teacher-forced pass against the same pass with the weights in fp32.

Run: .venv/bin/python benchmarks/sampler_logps.py [--adapter RUN/final/behavior] [--out PAGE.md]
On the GPU: --device cuda --model tiny-random-llama --dtypes bfloat16 (scripts/gpu-check.sh).
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from common import publish  # benchmarks/common.py (scripts run from this folder)
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from bpo.config import SamplingConfig
from bpo.model.ensemble import Ensemble
from bpo.model.logprobs import build_batch, build_shared_batch, sequence_logps
from bpo.model.policy import load_policy
from bpo.model.sampling import HFBackend
from bpo.tasks.quickstart import QuickstartTask


def behavior(model_name: str, device: str, dtype: str, adapter: str | None, scale: float):
    """The policy and an ensemble whose ``behavior`` adapter is ``adapter`` (a trained one), else a random LoRA."""
    policy = load_policy(model_name, device, dtype)
    if adapter:
        ens = Ensemble.from_adapters(policy.model, [adapter])
    else:
        ens = Ensemble.create(policy.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), 1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a trained-looking adapter: B is not zero
            for p in ens.member_parameters("member0"):
                p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p.dtype))
    ens.disable_dropout()
    ens.merge("behavior")
    return policy, ens


def fold_error(ens: Ensemble) -> list[float]:
    """Per adapted layer: ||round(W + delta-W) - (W + delta-W)|| / ||delta-W||, the share of delta-W a fold into
    the weights' dtype gets wrong (the sum taken in fp32 and rounded once, as ``Ensemble.folded`` does)."""
    out = []
    for layer in ens.peft.modules():
        if isinstance(layer, LoraLayer) and "behavior" in layer.lora_A:
            w = layer.get_base_layer().weight.float()
            delta = layer.get_delta_weight("behavior").float()
            exact = w + delta
            out.append(((exact.to(layer.get_base_layer().weight.dtype).float() - exact).norm() / delta.norm()).item())
    return out


def measure(a: argparse.Namespace, dtype: str) -> dict:
    policy, ens = behavior(a.model, a.device, dtype, a.adapter, a.scale)
    records = QuickstartTask(0).prompts("train", a.prompts)
    ids = [policy.encode_prompt(r.prompt) for r in records]
    keys = [r.id for r in records]
    params = SamplingConfig(max_new_tokens=a.tokens, temperature=1.0, top_k=0, top_p=0.95, batch_size=a.prompts)
    groups = HFBackend(policy, ens).generate(ids, 2, params, "behavior", True, keys)
    flat = [c for g in groups for c in g]
    shared = build_shared_batch(ids, [[c.token_ids for c in g] for g in groups], policy.tokenizer.pad_token_id)
    forced = ens.logps("behavior", shared)[0].double().cpu()
    whole = build_batch([p for p in ids for _ in range(2)], [c.token_ids for c in flat], policy.tokenizer.pad_token_id)
    with ens.active("behavior"), torch.no_grad():
        other_layout = sequence_logps(ens.peft, whole)[0].double().cpu()
    sampled = torch.tensor([c.logp for c in flat], dtype=torch.float64)
    # a fold into this dtype's weights, sampled with the same keys (bpo does this only where it is exact)
    with ens.folded("behavior"):
        rounded = [c for g in HFBackend(policy).generate(ids, 2, params, None, True, keys) for c in g]
    pairs = [[c.token_ids for c in rounded[i : i + 2]] for i in range(0, len(rounded), 2)]
    r_batch = build_shared_batch(ids, pairs, policy.tokenizer.pad_token_id)
    r_forced = ens.logps("behavior", r_batch)[0].double().cpu()
    r_sampled = torch.tensor([c.logp for c in rounded], dtype=torch.float64)
    error, exact = fold_error(ens), ens.folds_exactly("behavior")
    effect = (forced - ens.logps(None, shared)[0].double().cpu()).abs().mean().item()
    ens.peft.float()  # the same weights in fp32 (bf16 values are exact there): bf16's own rounding of the pass
    in_fp32 = ens.logps("behavior", shared)[0].double().cpu()
    return {
        "rows": len(flat),
        "mean_logp": forced.mean().item(),
        "sampler": (sampled - forced).abs(),
        "noise": (other_layout - forced).abs(),
        "folded": (r_sampled - r_forced).abs(),
        "differ": sum(x.token_ids != y.token_ids for x, y in zip(rounded, flat)),
        "folds_exactly": exact,
        "fp32": (forced - in_fp32).abs(),
        "error": (statistics.median(error), max(error)),
        "effect": effect,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--adapter", default=None, help="a trained PEFT adapter: RUN/final/behavior of a bash scripts/quickstart.sh run"
    )
    parser.add_argument("--scale", type=float, default=0.02, help="without --adapter: std of the random LoRA factors")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    rows = [
        "| dtype | what | sequences | differ from bpo's samples | mean abs gap (nats) | max abs gap (nats) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    folds = [
        "| dtype | fold error / delta-W, median layer | worst layer | the adapter's effect (mean nats a sequence) |",
        "| --- | ---: | ---: | ---: |",
    ]
    said = []
    for dtype in a.dtypes.split(","):
        m = measure(a, dtype)
        how = "adapter folded: exact in fp32" if m["folds_exactly"] else "adapter unfolded"
        lines = [
            (f"bpo's sampler ({how}) vs teacher-forced", m["sampler"], "-"),
            ("teacher-forced, two batch layouts (the forward's own noise)", m["noise"], "-"),
            ("teacher-forced vs the same pass in fp32 (the dtype's own rounding)", m["fp32"], "-"),
            (f"folded into {dtype} weights vs teacher-forced", m["folded"], str(m["differ"])),
        ]
        for what, gap, differ in lines if dtype != "float32" else lines[:2] + lines[3:]:
            rows.append(f"| {dtype} | {what} | {m['rows']} | {differ} | {gap.mean():.2e} | {gap.max():.2e} |")
            print(rows[-1], flush=True)
        folds.append(f"| {dtype} | {m['error'][0]:.1%} | {m['error'][1]:.1%} | {m['effect']:.2f} |")
        print(folds[-1], flush=True)
        if dtype != "float32":
            own = max(m["noise"].mean().item(), m["fp32"].mean().item())
            where = "within" if m["sampler"].mean() <= own else f"{m['sampler'].mean() / own:.1f} x"
            said.append(
                f"In {dtype} bpo's sampler is {m['sampler'].mean():.3f} nats a sequence from the teacher-forced pass "
                f"(max {m['sampler'].max():.3f}); the teacher-forced pass is {m['noise'].mean():.3f} from itself in "
                f"another batch layout and {m['fp32'].mean():.3f} from fp32: {where} the {dtype} forward's own "
                f"noise. A fold into {dtype} weights gets {m['error'][0]:.1%} of delta-W wrong in the median layer "
                f"({m['error'][1]:.1%} in the worst), and with the same keys {m['differ']} of {m['rows']} sequences "
                "came out different from the behavior model's."
            )
    adapter = (
        f"the trained adapter `{a.adapter}` (a run's merged behavior adapter: `bash scripts/quickstart.sh` makes one)"
        if a.adapter
        else f"a random LoRA (r 16, factors N(0, {a.scale}))"
    )
    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or platform.machine()
    publish(
        "Sampler log-probs vs the teacher-forced pass",
        f"`.venv/bin/python benchmarks/sampler_logps.py --model {a.model} --device {a.device} --dtypes {a.dtypes} "
        f"--prompts {a.prompts} --tokens {a.tokens}{f' --adapter {a.adapter}' if a.adapter else ''}` on {where}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}: {a.model} with {adapter} as the behavior "
        f"adapter, quickstart prompts, {a.prompts} prompts x 2 samples x up to {a.tokens} new tokens (temperature 1, "
        "top-p 0.95), the same per-sample keys in every row. Gap = |summed log-prob of a sequence by one computation "
        "- the teacher-forced pass under the behavior adapter|.",
        [
            *rows,
            "",
            *folds,
            "",
            *[line + "\n" for line in said],
            "bpo folds the adapter only where the fold is the same model (fp32 weights), and reuses the sampler's "
            "log-probs as BPO's reference only in fp32 (`bpo.train.step.sampler_is_reference`); in bf16/fp16 it "
            "samples with the adapter unfolded and teacher-forces the reference with the same adapter, so the loss at "
            "a phase start is exactly log 2. The run log says which, per run.",
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
