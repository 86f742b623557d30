"""``bpo rm``: train a reward model on human (chosen, rejected) pairs.

The loss is Bradley-Terry, ``-log sigmoid(r(x, y_chosen) - r(x, y_rejected))`` (Stiennon et al.
2020; TRL's ``RewardTrainer`` minimises the same loss). Why a short loop here and not TRL: TRL is
not a dependency of bpo (nor installed on the GPU machines), it pins transformers versions, and the
loop is the loss, AdamW and a linear schedule; what bpo adds is the input format the annotator must
reproduce exactly (:func:`bpo.annotators.reward_model.encode`), a held-out accuracy with its
interval, and an atomic save both loaders read.

The saved folder is a plain ``AutoModelForSequenceClassification`` (LoRA merged in) with its own
tokenizer, plus ``bpo_rm.json`` (how to format inputs) and ``rm.json`` (data, settings, accuracy).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bpo.annotators.reward_model import FORMAT_FILE, RewardModelError, _set_pad, is_reward_model, rewards
from bpo.data import PreferenceRecord, load_pairs, load_prompts, plain_dialogue, shuffled
from bpo.io import FolderLock, check_target, replace_dir, temp_for, write_json
from bpo.model.policy import ModelLoadError, default_device, offline_model_folder
from bpo.stats import at_chance, bootstrap_ci


def load_backbone(name: str, seed: int = 0) -> tuple[Any, Any, str]:
    """A one-output sequence classifier on ``name`` (Hub, folder or built-in offline name), tokenizer, source."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

    from bpo.model.policy import byte_tokenizer, tiny_llama_config

    if name == "tiny-random-llama":
        tokenizer = byte_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1))
        return model, tokenizer, name
    from transformers.utils import logging as hf_logging

    source = offline_model_folder(name) or name
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the new score head as missing: that is the point
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load {name!r} as a sequence classifier ({str(err).splitlines()[0] if str(err) else err}). "
            "Offline, pass a local folder or a built-in name (smollm2-135m-instruct, gemma3-270m, tiny-random-llama)."
        ) from None
    finally:
        hf_logging.set_verbosity(level)
    return model, tokenizer, str(source)


def split_pairs(pairs: list[PreferenceRecord], part: tuple[int, int], holdout: float, seed: int) -> tuple[list, list]:
    """(train, held-out) pairs of part ``i`` of ``n`` of a seeded permutation: parts never share a pair."""
    i, n = part
    if not 1 <= i <= n:
        raise RewardModelError(f"--part {i}/{n}: the part must be between 1 and {n}")
    mine = shuffled(pairs, seed)[i - 1 :: n]
    cut = len(mine) - int(round(len(mine) * holdout))
    if cut < 1 or (holdout > 0 and cut == len(mine)):
        raise RewardModelError(f"{len(mine)} pairs in part {i}/{n} leave nothing to train on or to hold out")
    return mine[:cut], mine[cut:]


def pair_scores(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferenceRecord],
    max_length: int,
    batch_size: int,
    grad: bool = False,
    done: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected responses, in one forward per batch."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    with torch.set_grad_enabled(grad):
        r = rewards(model, tokenizer, "concat", prompts, responses, max_length, 2 * batch_size, done)
    return r[: len(pairs)], r[len(pairs) :]


def accuracy(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferenceRecord],
    max_length: int,
    batch_size: int,
    resamples: int = 2000,
    seed: int = 0,
    progress: Any = None,
    what: str = "pairs",
) -> dict:
    """Pairwise accuracy (chosen strictly above rejected) with a bootstrap interval over pairs."""
    model.eval()
    done = None
    if progress is not None:  # minutes for a few hundred pairs on a CPU: say how far it is
        task = progress.add_task(f"reward model: scoring {len(pairs)} {what}", total=2 * len(pairs))
        done = lambda rows: progress.update(task, advance=rows)  # noqa: E731
    chosen, rejected = pair_scores(model, tokenizer, pairs, max_length, batch_size, done=done)
    right = (chosen > rejected).float().numpy()
    lo, hi = bootstrap_ci(right, n=resamples, seed=seed)
    return {
        "accuracy": float(right.mean()),
        "ci95": [lo, hi],
        "pairs": len(pairs),
        "ties": int((chosen == rejected).sum()),
    }


TRAIN_CHECK = 128  # training pairs whose accuracy is reported (the fit; a forward per pair is not free on a CPU)


def _lora(model: Any, r: int, top_layers: int) -> Any:
    """LoRA on every linear layer of the blocks, or of the top ``top_layers`` only.

    Top layers only is several times faster on a CPU: the backward pass stops below the lowest
    adapted block (SmolLM2-135M, 384-token pairs: 11 s per 8 pairs with the top 4 of 30 blocks,
    37 s with all of them).
    """
    from peft import LoraConfig

    if not top_layers:
        return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS")
    n = model.config.num_hidden_layers
    if not 1 <= top_layers <= n:
        raise RewardModelError(f"--top-layers {top_layers}: the model has {n} blocks")
    linear = {k.split(".")[-1] for k, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in k}
    return LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=sorted(linear),
        task_type="SEQ_CLS",
        layers_to_transform=list(range(n - top_layers, n)),
    )


def rm_warnings(result: dict) -> list[str]:
    """What makes a reward model's figures, or its use as a judge, doubtful."""
    out = []
    if result.get("degenerate_pairs_left_out"):
        out.append(
            f"warning: left out {result['degenerate_pairs_left_out']} pairs whose chosen and rejected responses are "
            "the same (no preference to learn)"
        )
    held = result.get("heldout")
    if held and at_chance(held):
        out.append(
            f"warning: held-out accuracy {held['accuracy']:.3f} [{held['ci95'][0]:.3f}, {held['ci95'][1]:.3f}]: its "
            "interval includes 0.5, so this judge is not shown to beat a coin"
        )
    if result["loss_last"] > result["loss_first"]:
        out.append(f"warning: the training loss rose ({result['loss_first']:.3f} -> {result['loss_last']:.3f})")
    return out


@dataclass
class RMSettings:
    """``bpo rm``'s options, typed and checked in one place (:meth:`check`) before any work."""

    model: str = "smollm2-135m-instruct"  # backbone: Hub name, folder or built-in offline name
    part: str = "1/1"  # I/N: part I of N disjoint parts
    holdout: float = 0.2
    lora_r: int = 16  # 0: full fine-tuning
    top_layers: int = 0  # LoRA on the top N blocks only (0: all)
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 8
    max_length: int = 512
    dialogue: str = "keep"  # or plain: HH turns as the BPO splits' "user: ... assistant: "
    seed: int = 0  # split, order and initialisation
    device: str = ""

    def check(self) -> tuple[int, int]:
        """Refuse a setting that cannot train; the part as (I, N)."""
        i, sep, n = self.part.partition("/")
        if not (sep and i.isdigit() and n.isdigit()):
            raise RewardModelError(f"--part {self.part!r}: use I/N, e.g. 1/2")
        for name, value in (("epochs", self.epochs), ("batch-size", self.batch_size), ("max-length", self.max_length)):
            if value < 1:
                raise RewardModelError(f"--{name} {value}: must be at least 1")
        if not (0 <= self.holdout < 1) or self.lora_r < 0 or not (0 < self.lr < 1):
            raise RewardModelError(
                f"--holdout {self.holdout} must be in [0, 1), --lora-r {self.lora_r} >= 0, --lr {self.lr} in (0, 1)"
            )
        if self.dialogue not in ("keep", "plain"):
            raise RewardModelError(f"--dialogue {self.dialogue!r}: use keep or plain")
        return int(i), int(n)


def read_pairs(data: Path, dialogue: str, exclude: list[Path], say: Callable[[str], None]) -> list[PreferenceRecord]:
    """The pairs to train on: HH turns rewritten as the BPO splits write them (``plain``), and without the
    pairs on ``exclude``'s prompts (a judge that has seen the eval prompts' references would favour them)."""
    pairs = load_pairs(data)
    if dialogue == "plain":
        pairs = [replace(p, prompt=plain_dialogue(p.prompt)) for p in pairs]
    if exclude:
        seen = {" ".join(r.prompt.split()) for f in exclude for r in load_prompts(f, reference_field=None)}
        kept = [p for p in pairs if " ".join(p.prompt.split()) not in seen]
        say(f"left out {len(pairs) - len(kept)} of {len(pairs)} pairs whose prompt is in --exclude")
        pairs = kept
    return pairs


def summary(out: Path, result: dict) -> list[str]:
    """What ``bpo rm`` prints: where the model is, its loss, its accuracies with intervals, its warnings."""
    tr, held = result["train"], result["heldout"]
    lines = [
        f"reward model: {out}  ({result['pairs_train']} training pairs, loss {result['loss_first']:.3f} -> "
        f"{result['loss_last']:.3f})",
        f"accuracy on {tr['pairs']} training pairs: {tr['accuracy']:.3f} [{tr['ci95'][0]:.3f}, {tr['ci95'][1]:.3f}]",
    ]
    if held:
        lines.append(
            f"held-out accuracy: {held['accuracy']:.3f} [{held['ci95'][0]:.3f}, {held['ci95'][1]:.3f}] "
            f"on {held['pairs']} pairs"
        )
    return lines + result["warnings"]


def train_rm(
    pairs: list[PreferenceRecord], s: RMSettings, out: Path, source: str = "", progress: Any = None, force: bool = False
) -> dict:
    """Train, measure and save a reward model; returns what ``rm.json`` holds.

    ``out`` is replaced only when it is a reward model bpo wrote (or empty, or ``force``), and only once
    the new one is complete.
    """
    started, part = time.time(), s.check()
    out = check_target(out, "a reward model bpo wrote", is_reward_model, force)
    degenerate = sum(p.chosen.strip() == p.rejected.strip() for p in pairs)
    if degenerate == len(pairs):
        raise RewardModelError(
            f"all {len(pairs)} pairs have the same chosen and rejected response: nothing to learn a preference from "
            "(check the file's chosen/rejected fields)"
        )
    pairs = [p for p in pairs if p.chosen.strip() != p.rejected.strip()]  # no preference; no gradient either
    train, held = split_pairs(pairs, part, s.holdout, s.seed)
    lock = FolderLock(out.parent / f".{out.name}.lock", f"reward model {out}")
    torch.manual_seed(s.seed)
    model, tokenizer, src = load_backbone(s.model, s.seed)
    _set_pad(tokenizer, model)
    model.to(torch.device(s.device) if s.device else default_device())
    model, losses = _fit(model, tokenizer, train, s, progress)
    fit = {"backbone": s.model, "data": source, "part": f"{part[0]}/{part[1]}", "seed": s.seed}
    keys = ("lora_r", "top_layers", "epochs", "lr", "batch_size", "max_length")
    fit.update(pairs_train=len(train), settings={k: getattr(s, k) for k in keys})
    fit.update(loss_first=float(np.mean(losses[:8])), loss_last=float(np.mean(losses[-8:])))

    def measured(pairs: list, what: str) -> dict:
        return accuracy(model, tokenizer, pairs, s.max_length, s.batch_size, seed=s.seed, progress=progress, what=what)

    result = {**fit, "train": measured(train[:TRAIN_CHECK], "training pairs")}
    result["heldout"] = measured(held, "held-out pairs") if held else None
    result["degenerate_pairs_left_out"] = degenerate
    result["warnings"] = rm_warnings(result)
    result["wall_seconds"] = round(time.time() - started, 1)
    tmp = temp_for(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / FORMAT_FILE, {"input": "concat", "max_length": s.max_length, "backbone": src})
        write_json(tmp / "rm.json", result)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
    return result


def _fit(model: Any, tokenizer: Any, train: list, s: RMSettings, progress: Any) -> tuple[Any, list[float]]:
    """The Bradley-Terry loop (AdamW, linear schedule with 10% warm-up, clip 1); LoRA merged in at the end."""
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    if s.lora_r:  # SEQ_CLS: PEFT trains the new score head in full beside the LoRA
        model = get_peft_model(model, _lora(model, s.lora_r, s.top_layers))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    steps = math.ceil(len(train) / s.batch_size) * s.epochs
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)
    task = progress.add_task("reward model", total=steps) if progress else None
    losses: list[float] = []
    for epoch in range(s.epochs):
        model.train()
        order = shuffled(train, s.seed * 1000 + epoch + 1)
        for i in range(0, len(order), s.batch_size):
            chosen, rejected = pair_scores(
                model, tokenizer, order[i : i + s.batch_size], s.max_length, s.batch_size, True
            )
            loss = -F.logsigmoid(chosen - rejected).mean()
            if not torch.isfinite(loss):
                raise RewardModelError(
                    f"non-finite reward-model loss at step {len(losses) + 1}: lower --lr (now {s.lr}) and retry"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            if progress:
                progress.update(task, advance=1, description=f"reward model loss {np.mean(losses[-16:]):.3f}")
    return (model.merge_and_unload() if s.lora_r else model), losses
