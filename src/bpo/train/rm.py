"""``bpo rm``: train a reward model on human (chosen, rejected) pairs.

The loss is Bradley-Terry, ``-log sigmoid(r(x, y_chosen) - r(x, y_rejected))`` (Stiennon et al.
2020; TRL's ``RewardTrainer`` minimises the same loss). Why a short loop here and not TRL: TRL is
not a dependency of bpo (nor installed on the GPU machines), it pins transformers versions, and the
loop is the loss, AdamW and a linear schedule; what bpo adds is the input format the annotator must
reproduce exactly (:func:`bpo.annotators.reward_model.encode`), a held-out accuracy with its
interval, and an atomic save both loaders read.

The saved folder is a PEFT adapter (LoRA, score head) on the backbone, a few MB (or, with
``--lora-r 0``, a plain ``AutoModelForSequenceClassification`` with its tokenizer), plus ``bpo_rm.json``
(backbone, how to format inputs), ``rm.json`` (data, split, settings, accuracy) and the keys of its
training prompts (``train_prompts.txt``).
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

from bpo.annotators.reward_model import (
    FORMAT_FILE,
    PROMPTS_FILE,
    RewardModelError,
    _set_pad,
    is_reward_model,
    load_backbone,
    prompt_key,
    prompts_digest,
)
from bpo.data import PreferenceRecord, load_pairs, load_prompts, plain_dialogue, shuffled
from bpo.io import FolderLock, check_target, replace_dir, temp_for, write_json, write_jsonl
from bpo.model.policy import default_device
from bpo.train.rm_measure import HELDOUT_FILE, measured, pair_scores, remeasure, rm_warnings


def rm_lock(out: Path) -> FolderLock:
    """One writer per reward-model folder: a lock beside ``out`` (not in it: ``out`` is replaced whole at the end).
    The ``.NAME.lock`` folder stays after a run; deleting a lock file another process waits on would let two in."""
    return FolderLock(out.parent / f".{out.name}.lock", "reward model", fix="or use another --out", guards=out)


def split_pairs(
    pairs: list[PreferenceRecord],
    part: tuple[int, int],
    holdout: float,
    split_seed: int,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> tuple[list, list, dict]:
    """(train, held-out) pairs of part ``i`` of ``n``, and the split's record for rm.json.

    The file's distinct prompts are permuted with ``split_seed`` and dealt into ``n`` parts, so two
    parts never share a prompt, whatever each leaves out: ``exclude`` (prompt keys) applies after
    the split. The part's ``holdout`` share of prompts is held out, so no held-out prompt is trained on.
    """
    i, n = part
    if not 1 <= i <= n:
        raise RewardModelError(f"--part {i}/{n}: the part must be between 1 and {n}")
    keys = [prompt_key(p.prompt) for p in pairs]
    everyone = sorted(set(keys))
    mine = set(shuffled(everyone, split_seed)[i - 1 :: n])
    excluded = mine & set(exclude)
    kept = sorted(mine - excluded)
    order = shuffled(kept, split_seed + 1)
    cut = len(order) - int(round(len(order) * holdout))
    if cut < 1 or (holdout > 0 and cut == len(order)):
        raise RewardModelError(f"{len(order)} prompts in part {i}/{n} leave nothing to train on or to hold out")
    train_keys = set(order[:cut])
    train = [p for p, k in zip(pairs, keys) if k in train_keys]
    held = [p for p, k in zip(pairs, keys) if k in mine and k not in excluded and k not in train_keys]
    record = {
        "seed": split_seed,
        "part": f"{i}/{n}",
        "prompts_in_file": len(everyone),
        "prompts_excluded": len(excluded),
        "pairs_excluded": sum(k in excluded for k in keys),
        "prompts_train": len(train_keys),
        "prompts_heldout": len(order) - cut,
        "train_prompts_sha256": prompts_digest(sorted(train_keys)),
    }
    return train, held, record


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
    seed: int = 0  # initialisation (score head, LoRA) and training order
    split_seed: int = 0  # the permutation of prompts the parts are dealt from: the same for proxy and gold
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


def read_pairs(data: Path, dialogue: str) -> list[PreferenceRecord]:
    """The pairs to train on: HH turns rewritten as the BPO splits write them (``plain``)."""
    pairs = load_pairs(data)
    if dialogue == "plain":
        pairs = [replace(p, prompt=plain_dialogue(p.prompt)) for p in pairs]
    return pairs


def excluded_prompts(files: Sequence[Path], pairs: Sequence[PreferenceRecord], dialogue: str) -> set[str]:
    """Keys of the prompts in ``files`` (``--exclude``): a judge that has seen the eval prompts' references
    would favour them. A file none of whose prompts is a prompt of ``pairs`` (as ``--dialogue`` writes them)
    is refused: it would leave nothing out, and the run's leak check could not see the leak either."""
    have = {prompt_key(p.prompt) for p in pairs}
    keys = set()
    for f in files:
        mine = {prompt_key(r.prompt) for r in load_prompts(f, reference_field=None)}
        if not mine & have:
            plain = {prompt_key(plain_dialogue(p.prompt)) for p in pairs} if dialogue == "keep" else set()
            why = (
                f"with --dialogue plain {len(mine & plain)} would (the BPO splits write HH turns as 'user: ... "
                "assistant: ')"
                if mine & plain
                else "give prompts of the same data (field 'prompt') or leave --exclude out"
            )
            raise RewardModelError(
                f"--exclude {f}: 0 of its {len(mine)} prompts match a prompt of the pairs (--dialogue {dialogue}), "
                f"so nothing would be left out; {why}"
            )
        keys |= mine
    return keys


def train_rm(
    pairs: list[PreferenceRecord],
    s: RMSettings,
    out: Path,
    source: str = "",
    progress: Any = None,
    force: bool = False,
    exclude: frozenset[str] | set[str] = frozenset(),
    say: Callable[[str], None] | None = None,
) -> dict:
    """Train, measure and save a reward model; returns what ``rm.json`` holds.

    ``out`` is replaced only when it is a reward model bpo wrote (or empty, or ``force``), and only once
    the new one is complete.
    """
    started, part = time.time(), s.part
    out = check_target(out, "a reward model bpo wrote", is_reward_model, force)
    pairs, degenerate = _with_preference(pairs)
    train, held, split = split_pairs(pairs, s.check(), s.holdout, s.split_seed, exclude)
    if split["pairs_excluded"] and say:
        say(
            f"left out {split['pairs_excluded']} pairs on {split['prompts_excluded']} prompts of part {part}: --exclude"
        )
    lock = rm_lock(out)
    torch.manual_seed(s.seed)
    model, tokenizer, src = load_backbone(s.model, s.seed)
    _set_pad(tokenizer, model)
    model.to(torch.device(s.device) if s.device else default_device())
    model, losses = _fit(model, tokenizer, train, s, progress)
    keys = ("lora_r", "top_layers", "epochs", "lr", "batch_size", "max_length")
    fit = {"backbone": s.model, "data": source, "split": split, "init_seed": s.seed, "pairs_train": len(train)}
    fit.update(settings={k: getattr(s, k) for k in keys}, loss_first=np.mean(losses[:8]).item())
    fit["loss_last"] = np.mean(losses[-8:]).item()
    spec = {"input": "concat", "max_length": s.max_length, "backbone": src}
    tmp = temp_for(out)
    try:
        # LoRA: the adapter (PEFT format, score head included, a few MB), measured as the loader merges it
        model.save_pretrained(tmp, safe_serialization=True)
        if s.lora_r:
            model = model.merge_and_unload()
            spec.update(adapter_of=s.model, init_seed=s.seed)
        else:
            tokenizer.save_pretrained(tmp)
        figures, rows = measured(model, tokenizer, train, held, s, progress)
        result = {**fit, **figures}
        result["degenerate_pairs_left_out"] = degenerate
        result["warnings"] = rm_warnings(result)
        result["wall_seconds"] = round(time.time() - started, 1)
        write_json(tmp / FORMAT_FILE, spec)
        write_json(tmp / "rm.json", result)
        if rows:
            write_jsonl(tmp / HELDOUT_FILE, rows)
        (tmp / PROMPTS_FILE).write_text("".join(k + "\n" for k in sorted({prompt_key(p.prompt) for p in train})))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
    return result


def measure_saved(
    pairs: list[PreferenceRecord], s: RMSettings, out: Path, exclude: frozenset[str] | set[str], progress: Any = None
) -> dict:
    """``bpo rm --measure-only``: the reward model saved in ``out`` measured again on its held-out pairs, which
    the same split options give back (checked against its training-prompt digest); rm.json is updated."""
    check_out(out, False, True)
    pairs, _ = _with_preference(pairs)
    _, held, split = split_pairs(pairs, s.check(), s.holdout, s.split_seed, exclude)
    lock = rm_lock(out)
    try:
        return remeasure(out, held, split, s, progress)
    finally:
        lock.release()


def check_out(out: Path, force: bool, measure_only: bool) -> None:
    """Before any work: ``out`` is a reward model bpo wrote (measured again), or one it may replace."""
    if measure_only and not is_reward_model(out):
        raise RewardModelError(f"--measure-only: {out} holds no reward model bpo wrote; train one there first")
    check_target(out, "a reward model bpo wrote", is_reward_model, force)


def _with_preference(pairs: list[PreferenceRecord]) -> tuple[list[PreferenceRecord], int]:
    """The pairs whose chosen and rejected responses differ (the others teach nothing), and how many did not."""
    kept = [p for p in pairs if p.chosen.strip() != p.rejected.strip()]
    if not kept:
        raise RewardModelError(
            f"all {len(pairs)} pairs have the same chosen and rejected response: nothing to learn a preference from "
            "(check the file's chosen/rejected fields)"
        )
    return kept, len(pairs) - len(kept)


def _fit(model: Any, tokenizer: Any, train: list, s: RMSettings, progress: Any) -> tuple[Any, list[float]]:
    """The Bradley-Terry loop (AdamW, linear schedule with 10% warm-up, clip 1); the PEFT model when LoRA."""
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
    return model, losses
