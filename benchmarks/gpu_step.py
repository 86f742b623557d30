"""A paper-scale BPO step on one GPU: seconds per part, peak memory and training MFU.

The paper's batch (16 prompts x 2 samples x 128 new tokens, K = 5 members of LoRA r 256 on every
linear layer) on Gemma-3-270M in bf16, through bpo's own loop (``bpo.train.loop.train``) with F = T, so
every step samples its prompts (the worst case for BPO; F = 2 samples a whole phase at once). The
first step is a warm-up and is left out of the means. The training FLOPs are counted by torch's
``FlopCounterMode`` around the warm-up step's update (reference pass, every member's forward,
backward and AdamW); MFU = those FLOPs / (seconds of reference + update) / the chip's dense bf16 peak.

Sized to finish in under 8 minutes on an H100 (the model load and a 3-step run). On CPU with a tiny
model it is the smoke test that keeps it runnable (tests/test_benchmarks.py).

Run: python benchmarks/gpu_step.py --model FOLDER [--prompts 16 --tokens 128 --k 5 --rank 256 --steps 4]
     [--out docs/benchmarks/gpu-step.md]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, SXM where it varies
PARTS = ("sample", "annotate", "reference", "update")


def reward(record, response: str) -> float:
    """A cheap pointwise annotator (the GPU time is the subject): responses near 300 characters score best,
    a hash of the text breaks ties (equal lengths would leave a step with nothing to train)."""
    return -abs(len(response) - 300) / 300 + zlib.crc32(response.encode()) / 2**32 * 1e-3


# --model random:NAME: a model of these shapes with random weights, built on the spot (the machine needs no
# download): the compute of the real model, not its outputs. gemma2-2b is the paper's policy.
SHAPES = {
    "gemma2-2b": dict(
        arch="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000,
    ),
    "tiny": dict(
        arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=512,
    ),
}  # fmt: skip


def random_model(name: str, folder: Path, device: str, dtype: str) -> str:
    """A random-weight model of SHAPES[name] saved in ``folder``, with a word-level tokenizer of its whole
    vocabulary (every sampled id decodes to a word, so responses differ in text and length)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shape = dict(SHAPES[name])
    arch, n = shape.pop("arch"), shape["vocab_size"]
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {**{t: i for i, t in enumerate(specials)}, **{f"w{i}": i for i in range(len(specials), n)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    config_cls, model_cls = (Gemma2Config, Gemma2ForCausalLM) if arch == "gemma2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls(config).to({"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}.get(dtype, torch.float32))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def peak_flops(device: str, given: float) -> float | None:
    if given:
        return given * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def one_run(a: argparse.Namespace, k: int) -> dict:
    """bpo's loop at K members; the means of the timed steps, the first step's FLOPs, the run's peaks."""
    from torch.utils.flop_counter import FlopCounterMode

    import bpo.train.loop
    import bpo.train.step
    from bpo.config import load_config

    counted: list[float] = []
    real_step = bpo.train.step.train_step

    def counting_step(*args, **kwargs):  # FLOPs of the first step only: counting slows what it counts
        if counted:
            return real_step(*args, **kwargs)
        with FlopCounterMode(display=False) as fc:
            out = real_step(*args, **kwargs)
        counted.append(float(fc.get_total_flops()))
        return out

    bpo.train.loop.train_step = counting_step
    # A phase-end checkpoint at the paper's scale holds K x ~330M LoRA weights with their Adam state
    # (~20 GB at K = 5): it is not part of a step's time, and it overflowed the GPU machine's disk.
    real_save = bpo.train.loop.save_checkpoint
    bpo.train.loop.save_checkpoint = lambda *args, **kwargs: None
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model
        if model.startswith("random:"):
            model = random_model(model.removeprefix("random:"), Path(tmp) / "model", a.device, a.dtype)
        over = [
            f"model.name={model}", f"model.dtype={a.dtype}", f"device={a.device}", f"output_dir={tmp}/run",
            f"sft_dir={tmp}/sft", "sft.epochs=0", f"sft.seeds=[{','.join(str(i) for i in range(k))}]",
            f"lora.r={a.rank}", f"lora.alpha={2 * a.rank}", "lora.dropout=0", "lora.target_modules=all-linear",
            f"train.steps={a.steps}", f"train.batch_size={a.prompts}", f"train.phases={a.steps}",
            f"train.micro_batch={a.micro_batch}", "train.log_kl_sft=false",
            f"sampling.max_new_tokens={a.tokens}", f"sampling.batch_size={a.prompts}",
            "annotator.kind=callable", f"annotator.callable={Path(__file__).resolve()}:reward",
            f"data.sft_examples={a.prompts}",
            # compute does not depend on lr; at the default one a random-weight policy collapsed after one
            # update (H200, 2026-12-04: 15 and 16 of 16 pairs identical), leaving timed steps nothing to train
            "train.lr=1e-7",
        ]  # fmt: skip
        started = time.time()
        bpo.train.loop.train(load_config(a.task, over), evaluate=False)
        wall = time.time() - started
        metrics = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        info = json.loads((Path(tmp) / "run" / "run.json").read_text())
    bpo.train.loop.train_step = real_step
    bpo.train.loop.save_checkpoint = real_save
    timed = metrics[1:] or metrics  # the first step warms up (allocator, kernels)
    out = {p: sum(m.get(f"time/{p}", 0.0) for m in timed) / len(timed) for p in PARTS}
    out.update(step=sum(m["time/step"] for m in timed) / len(timed), flops=counted[0] if counted else 0.0)
    out["pairs"] = min(m.get("pairs/kept", 0) for m in timed)
    out.update(
        k=k, timed=len(timed), wall=wall, cuda=info.get("peak_cuda_mib", 0) / 1024, rss=info["peak_rss_mib"] / 1024
    )
    return out


def main() -> None:
    # here, not at the top: bpo imports this file for its reward callable, without benchmarks/ on the path
    from common import publish

    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--model",
        default="gemma3-270m",
        help=f"a model folder, Hub name, bpo offline name or random:{'|'.join(SHAPES)}",
    )
    parser.add_argument("--task", default="quickstart", help="preset whose prompts are sampled")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--prompts", type=int, default=16, help="B")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--k", default="5", help="ensemble members; a list (1,2,5) measures the ensemble's cost")
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="T; the first is a warm-up")
    parser.add_argument("--micro-batch", type=int, default=0, help="train.micro_batch (0: all B on a GPU)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the chip's dense bf16 peak (default: by name)")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    ks = [int(k) for k in a.k.split(",")]
    results = {k: one_run(a, k) for k in ks}
    peak = peak_flops(a.device, a.peak_tflops)

    def mfu(r: dict) -> str:
        train_s = r["reference"] + r["update"]
        return f"{r['flops'] / train_s / peak:.1%}" if peak and r["flops"] and train_s else "(no peak for this device)"

    one = results.get(1)
    figures = [
        ("s/step", lambda r: f"{r['step']:.2f}"),
        *((f"{p} s/step", lambda r, p=p: f"{r[p]:.2f}") for p in PARTS),
        ("update / (K x update at K = 1)", lambda r: f"{r['update'] / one['update'] / r['k']:.2f}" if one else "-"),
        ("pairs trained, fewest in a timed step", lambda r: f"{r['pairs']:.0f} of {a.prompts}"),
        ("training FLOPs, first step", lambda r: f"{r['flops']:.3g}"),
        ("training MFU", mfu),
        ("peak GPU memory", lambda r: f"{r['cuda']:.1f} GiB"),
        ("peak RSS", lambda r: f"{r['rss']:.1f} GB"),
        ("wall (load + steps)", lambda r: f"{r['wall']:.0f} s"),
    ]
    rows = ["| figure | " + " | ".join(f"K = {k}" for k in ks) + " |", "| --- |" + " ---: |" * len(ks)]
    rows += [f"| {name} | " + " | ".join(fn(results[k]) for k in ks) + " |" for name, fn in figures]
    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    publish(
        "A paper-scale BPO step",
        f"`python benchmarks/gpu_step.py --model {a.model} --task {a.task} --device {a.device} --dtype {a.dtype} "
        f"--prompts {a.prompts} --tokens {a.tokens} --k {a.k} --rank {a.rank} --steps {a.steps} --micro-batch "
        f"{a.micro_batch}` on {where}, torch {torch.__version__}: F = T (every step samples its {a.prompts} "
        f"prompts x 2), LoRA r {a.rank} on every linear layer; means of {results[ks[0]]['timed']} steps after a "
        "warm-up step. update / (K x update at K = 1) <= 1: K members cost at most K times one.",
        [
            *rows,
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
