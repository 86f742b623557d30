"""bpo against TRL's OnlineDPOTrainer, side by side in one invocation.

Both get the same model, training prompts, LoRA (all linear layers, no dropout), batch (B prompts x 2
samples), sampling (temperature, top-p, new tokens), optimizer (AdamW, eps 1e-6, no weight decay,
linear decay), beta and reward function, one after the other, each in a fresh process with the same
thread count. TRL runs with ``gradient_checkpointing=False`` (its default turns the KV cache off while
generating) and its reference is the model with the adapter disabled; bpo starts from the model
itself too (``sft.epochs=0``) and runs with K = 1 (TRL trains one model).

Like for like: both sides format prompts the same way (``--chat-template``: never, TL;DR prompts end
in their own cue; always: the tokenizer's chat template on both), stop at the same EOS, and count the
tokens they generate (tokens/s beside pairs/s: responses of different lengths cost differently).
TRL runs twice: the whole batch in one pass (its default) and one prompt per micro-batch with gradient
accumulation (its memory-saving setting); bpo with one prompt per micro-batch (its CPU default) and
with the whole batch in one pass, and with its engine backend (``sampling.backend=llamacpp``, needs
``bash scripts/engine.sh``). Every run is repeated ``--repeats`` times, each in a fresh process.

For each run: pairs/s over all steps (min and median of the repeats), s/step and where it went
(sampling, annotation, reference, update; the median repeat), tokens/s, and the peak RSS. bpo's
parts come from its own ``time/*`` metrics; TRL's are timed around its ``_generate`` and ``_forward``
(no-grad calls are the reference) and the reward function; TRL's "update" is the rest of the step
(policy forward, backward, optimizer).

TRL is not a bpo dependency: ``pip install -e .[bench]`` installs the version this was written for.
Run: .venv/bin/python benchmarks/vs_trl.py [--steps 4 --batch 8 --tokens 64 --repeats 3]
     [--out docs/benchmarks/vs-trl.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
PARTS = ("sample", "annotate", "reference", "update")


def reward(response: str) -> float:
    """The shared annotator: responses near 40 words score best (cheap, deterministic, no model)."""
    return -abs(len(response.split()) - 40) / 40


def bpo_reward(record, response: str) -> float:  # bpo's pointwise callable: fn(prompt_record, response)
    return reward(response)


_reward_seconds = [0.0]


def trl_reward(prompts, completions, **kwargs) -> list[float]:  # TRL's reward function signature
    start = time.perf_counter()
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    out = [reward(t) for t in texts]
    _reward_seconds[0] += time.perf_counter() - start
    return out


def model_folder(name: str, tmp: Path) -> str:
    """A folder both libraries load: a built-in offline model's cache, tiny-random-llama saved, or ``name``."""
    from bpo.model.policy import load_policy, offline_model_folder

    if name == "tiny-random-llama":
        policy = load_policy(name, "cpu")
        policy.model.save_pretrained(tmp / "tiny")
        policy.tokenizer.save_pretrained(tmp / "tiny")
        return str(tmp / "tiny")
    folder = offline_model_folder(name)
    return str(folder) if folder else name


def trl_worker(a: argparse.Namespace) -> None:
    """One TRL run in this process; writes its timings to ``a.json``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from bpo.config import load_config
    from bpo.data import load_source

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    records = load_source(load_config(a.task).data, "train", a.steps * a.batch, tokenizer)
    chat = a.chat_template == "always"  # bpo gets model.chat_template=the same
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r.prompt}] if chat else r.prompt} for r in records]
    )
    dtype = {"float32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)  # PEFT keeps the adapter in fp32
    args = OnlineDPOConfig(
        output_dir=a.tmp,
        per_device_train_batch_size=1 if a.trl_micro else a.batch,
        gradient_accumulation_steps=a.batch if a.trl_micro else 1,
        max_steps=a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        adam_epsilon=1e-6,
        beta=a.beta,
        max_new_tokens=a.tokens,
        temperature=1.0,
        top_p=0.95,
        top_k=0,
        gradient_checkpointing=False,
        use_cpu=a.device == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
    )
    lora = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules="all-linear")
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=trl_reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora,
    )
    seconds = {p: 0.0 for p in PARTS}
    steps: list[float] = []
    tokens = [0]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None

    def timed(fn, part_of):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                seconds[part_of(*args, **kwargs)] += time.perf_counter() - start

        return wrapper

    generate = timed(trainer._generate, lambda *x, **k: "sample")

    def counted(*args, **kwargs):
        out = generate(*args, **kwargs)
        tokens[0] += int(out[3].sum())  # completion_mask: the tokens generated, up to and with EOS
        return out

    trainer._generate = counted
    trainer._forward = timed(trainer._forward, lambda *x, **k: "update" if torch.is_grad_enabled() else "reference")

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            sync()
            steps.append(time.perf_counter() - self.start)

    trainer.add_callback(StepTimes())
    trainer.train()
    seconds["annotate"] = _reward_seconds[0]
    # "update" so far is only the policy forward; the step's backward and optimizer are the rest of it
    seconds["update"] = sum(steps) - seconds["sample"] - seconds["annotate"] - seconds["reference"]
    Path(a.json).write_text(json.dumps({"steps": steps, "seconds": seconds, "tokens": tokens[0]}))


def bpo_run(a: argparse.Namespace, phases: int, reference: str, micro: int, backend: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "bpo.cli", "train", a.task, "--no-eval", f"model.chat_template={a.chat_template}",
        f"sampling.backend={backend}", f"model.name={a.model}", f"model.dtype={a.dtype}", f"device={a.device}",
        f"output_dir={out}", f"sft_dir={Path(a.tmp) / 'sft'}", "sft.epochs=0", "sft.seeds=[0]",
        f"lora.r={a.rank}", f"lora.alpha={2 * a.rank}", "lora.dropout=0", "lora.target_modules=all-linear",
        f"train.steps={a.steps}", f"train.batch_size={a.batch}", f"train.phases={phases}",
        f"train.reference={reference}", f"train.lr={a.lr}", f"train.beta={a.beta}", "train.log_kl_sft=false",
        "train.weight_decay=0", "train.adam_eps=1e-6",
        f"sampling.max_new_tokens={a.tokens}", "sampling.temperature=1", "sampling.top_p=0.95", "sampling.top_k=0",
        "annotator.kind=callable", f"annotator.callable={HERE}:bpo_reward", f"train.micro_batch={micro}",
    ]  # fmt: skip


def measure(cmd: list[str], threads: int) -> int:
    """Run ``cmd`` to the end; its peak RSS in MiB (it fails the benchmark if it fails)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return round(usage.ru_maxrss / 1024)


def row(name: str, repeats: list[dict], batch: int, trl: float | None) -> dict:
    """One run's figures over its repeats: pairs/s min and median, the rest from the median repeat."""
    rates = [batch * len(r["steps"]) / sum(r["steps"]) for r in repeats]
    median = sorted(repeats, key=lambda r: batch * len(r["steps"]) / sum(r["steps"]))[len(repeats) // 2]
    n = len(median["steps"])
    return {
        "run": name,
        "s/step": sum(median["steps"]) / n,
        **{f"{p} s/step": median["seconds"].get(p, 0.0) / n for p in PARTS},
        "pairs/s min": min(rates),
        "pairs/s median": statistics.median(rates),
        "tokens/s": median["tokens"] / sum(median["steps"]),
        "tokens/pair": median["tokens"] / (batch * n),
        "vs TRL": statistics.median(rates) / trl if trl else 1.0,
        "peak RSS GB": max(r["rss"] for r in repeats) / 1024,
    }


def one_repeat(a: argparse.Namespace, spec, tmp: str, k: int) -> dict:
    """One fresh process of a run: its step times, parts, generated tokens and peak RSS."""
    if spec[0] == "trl":
        out = Path(tmp) / f"trl-{spec[1]}-{k}.json"
        cmd = [sys.executable, str(HERE), *sys.argv[1:], "--worker", "trl", "--json", str(out), "--tmp", tmp]
        cmd += ["--model", a.model] + (["--trl-micro"] if spec[1] else [])
        rss = measure(cmd, a.threads)
        return {**json.loads(out.read_text()), "rss": rss}
    folder = Path(tmp) / f"bpo-{'-'.join(map(str, spec))}-{k}"
    rss = measure(bpo_run(a, *spec, folder), a.threads)
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    ledger = [json.loads(x) for x in (folder / "annotations.jsonl").read_text().splitlines()[1:]]
    return {
        "steps": [m["time/step"] for m in metrics],
        "seconds": {p: sum(m.get(f"time/{p}", 0.0) for m in metrics) for p in PARTS},
        "tokens": sum(len(t) for e in ledger for t in e["tokens"]),
        "rss": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="tldr-local", help="preset whose training prompts both train on")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bf16"], help="base weights, both runs")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="B: prompts per step, 2 samples each")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per run")
    parser.add_argument("--chat-template", default="never", choices=["never", "always"], help="both sides")
    parser.add_argument("--trl-micro", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated parts of run names (default: all; engine rows only by a part naming the engine)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker == "trl":
        return trl_worker(a)

    shown_model = a.model
    with tempfile.TemporaryDirectory() as tmp:
        a.tmp = tmp
        a.model = model_folder(a.model, Path(tmp))
        T, B = a.steps, a.batch
        runs = {  # name -> ("trl", micro-batches?) or (F, reference, train.micro_batch, sampling.backend)
            "TRL OnlineDPOTrainer (F = T, reference = the model), whole batch": ("trl", False),
            "TRL, 1 prompt per micro-batch + gradient accumulation": ("trl", True),
            "bpo online DPO, reference = the model (F = T, TRL's setting)": (T, "sft", 0, "hf"),
            "bpo online DPO (F = T), whole batch in one pass": (T, "sft", B, "hf"),
            "bpo BPO F = 2": (2, "behavior", 0, "hf"),
            "bpo online DPO (F = T), llamacpp engine": (T, "sft", 0, "llamacpp"),
            "bpo BPO F = 2, llamacpp engine": (2, "behavior", 0, "llamacpp"),
        }
        wanted = [w.strip() for w in a.only.split(",") if w.strip()]
        rows, trl = [], None
        for name, spec in runs.items():
            if wanted and not any(w in name and ("engine" in w) == ("engine" in name) for w in wanted):
                continue
            print(f"{name} ...", flush=True)
            repeats = [one_repeat(a, spec, tmp, k) for k in range(a.repeats)]
            r = row(name, repeats, a.batch, trl)
            trl = trl or (r["pairs/s median"] if spec[0] == "trl" else None)
            rows.append(r)
            print("  " + ", ".join(f"{k} {v:.3g}" for k, v in r.items() if k != "run"), flush=True)
    write(a, shown_model, rows)


def write(a: argparse.Namespace, model: str, rows: list[dict]) -> None:
    # here, not at the top: bpo imports this file for its reward callable, without benchmarks/ on the path
    import torch
    import trl
    from common import publish

    import bpo

    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" + "---:|" * (len(heads) - 1)]
    for r in rows:
        lines.append("| " + " | ".join([r["run"]] + [f"{r[h]:.3g}" for h in heads[1:]]) + " |")
    where = f"{platform.machine()}, {a.threads} threads, torch {torch.__version__}, TRL {trl.__version__}"
    publish(
        "bpo vs TRL's OnlineDPOTrainer",
        f"`.venv/bin/python benchmarks/vs_trl.py --task {a.task} --model {model} --device {a.device} --dtype "
        f"{a.dtype} --steps {a.steps} --batch {a.batch} --tokens {a.tokens} --rank {a.rank} --repeats {a.repeats} "
        f"--chat-template {a.chat_template} --threads {a.threads}` on {where}, "
        f"bpo {getattr(bpo, '__version__', '')}: {a.steps} steps of {a.batch} {a.task} training prompts x 2 "
        f"samples x up to {a.tokens} new tokens, LoRA r {a.rank} on all linear layers, {a.dtype} base "
        f"weights, prompts formatted alike (chat template: {a.chat_template}), {a.repeats} fresh processes per run. "
        "pairs/s min and median over the repeats; s/step (mean over the steps) and its parts from the median "
        "repeat (see the script's docstring); vs TRL: median pairs/s over TRL's whole-batch median.",
        [
            *lines,
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
