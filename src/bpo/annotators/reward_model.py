"""Reward models as judges: how one reads a (prompt, response), and its scores.

A reward-model folder is a plain ``AutoModelForSequenceClassification`` with its own tokenizer;
one ``bpo rm`` wrote (:mod:`bpo.train.rm`) also has ``bpo_rm.json`` (how to format inputs, which
:func:`encode` reproduces exactly) and ``rm.json`` (data, settings, held-out accuracy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo.annotators.base import Annotator, ScoreAnnotator, register_annotator
from bpo.config import Config
from bpo.data import PromptRecord
from bpo.errors import BpoError
from bpo.stats import at_chance

if TYPE_CHECKING:  # torch loads with the model, not when the kind is registered (every config check)
    import torch

FORMAT_FILE = "bpo_rm.json"


class RewardModelError(BpoError, ValueError):
    """A reward model cannot be trained or used as asked; the message says why and what to do."""


def encode(tokenizer: Any, style: str, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> dict:
    """Right-padded model inputs for (prompt, response) pairs, as the reward model was trained to read them.

    ``concat`` (what ``bpo rm`` trains): ``prompt.rstrip() + " " + response.strip()`` with the
    prompt cut from the left, so the response and the prompt's end (its question) always fit.
    ``pair``: the tokenizer's text-pair encoding (encoder RMs such as the paper's DeBERTa).
    ``chat``: the tokenizer's chat template, prompt as the user turn and response as the assistant's.
    """
    from bpo.model.logprobs import pad

    if style == "pair":
        return tokenizer(
            list(prompts), list(responses), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
    rows = []
    for p, r in zip(prompts, responses):
        if style == "chat":
            msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            head = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(msgs, tokenize=False)
            p_ids = tokenizer(head, add_special_tokens=False).input_ids
            r_ids = tokenizer(full[len(head) :], add_special_tokens=False).input_ids
        else:
            p_ids = tokenizer(p.rstrip()).input_ids
            r_ids = tokenizer(" " + r.strip(), add_special_tokens=False).input_ids
        r_ids = r_ids[: max_length - 1]
        rows.append(p_ids[-(max_length - len(r_ids)) :] + r_ids)
    ids, mask = pad(rows, tokenizer.pad_token_id, "right")  # right: the score is read at the last real token
    return {"input_ids": ids, "attention_mask": mask}


def input_spec(folder: str | Path) -> dict:
    """How ``bpo rm`` recorded that its model reads inputs (format, length); empty for other models."""
    spec = Path(folder) / FORMAT_FILE
    return json.loads(spec.read_text()) if spec.exists() else {}


def input_style(spec: dict, tokenizer: Any) -> str:
    """The format a reward model reads: recorded by ``bpo rm``; otherwise chat if it has a template, else pair."""
    if spec:
        return spec["input"]
    return "chat" if getattr(tokenizer, "chat_template", None) else "pair"


class RewardModel:
    """Scores (prompt, response) with a saved reward model, in its own tokenizer and input format.

    Refused in one line unless the folder holds a trained score head: a causal LM (or any model
    whose head would be newly initialised) loads as a sequence classifier with a random head and
    gives random scores. Scored at the length it was trained at (``bpo_rm.json``) unless
    ``max_length`` overrides it; a different override, and the accuracy rm.json records, are said in
    :attr:`notes`.
    """

    def __init__(self, folder: str, batch_size: int = 16, max_length: int = 0, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from bpo.model.policy import ModelLoadError, default_device

        self.device = torch.device(device) if device else default_device()
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report of a random head: refused below, in one line
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
        except OSError as err:
            raise ModelLoadError(
                f"cannot load reward model {folder!r} ({err}). Offline, download it elsewhere with "
                f"`hf download {folder} --local-dir DIR` and pass DIR, or train one with `bpo rm`."
            ) from err
        finally:
            hf_logging.set_verbosity(level)
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise RewardModelError(
                f"{folder} is not a trained reward model: {missing[0]} is not in it"
                f"{f' (nor {len(missing) - 1} more weights)' if len(missing) > 1 else ''}, so its score head would be "
                "random. Pass a sequence-classification reward model, or train one with `bpo rm PAIRS --out DIR`"
            )
        if model.config.num_labels != 1:
            raise RewardModelError(
                f"{folder} has {model.config.num_labels} outputs; a reward model gives one score (num_labels=1)"
            )
        self.model = model.to(self.device).eval()
        _set_pad(self.tokenizer, self.model)
        spec = input_spec(folder)
        self.style = input_style(spec, self.tokenizer)
        self.trained_length = spec.get("max_length")
        self.max_length = max_length or self.trained_length or 1024
        self.notes: list[str] = []  # said when it loads: how good a judge it is, and how it is read
        if max_length and self.trained_length and max_length != self.trained_length:
            self.notes.append(
                f"note: reward model {folder} was trained at {self.trained_length} tokens; it scores at {max_length} "
                "(annotator.max_length; 0 uses its own)"
            )
        # what decides its scores: the files it loaded (size and time), how it reads and how much
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).glob("*") if p.is_file())
        self.identity = json.dumps([str(Path(folder).resolve()), files, self.style, self.max_length])
        self.accuracy = recorded_accuracy(folder)
        if self.accuracy:
            a, (lo, hi), coin = self.accuracy["accuracy"], self.accuracy["ci95"], at_chance(self.accuracy)
            self.notes.append(
                f"{'warning' if coin else 'note'}: reward model {folder}: held-out accuracy {a:.3f} "
                f"[{lo:.3f}, {hi:.3f}] on {self.accuracy['pairs']} pairs (rm.json)"
                + ("; its interval includes 0.5: not shown to beat a coin" if coin else "")
            )
        self.batch_size = batch_size

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch

        with torch.no_grad():
            return rewards(
                self.model, self.tokenizer, self.style, prompts, responses, self.max_length, self.batch_size
            ).tolist()


def rewards(
    model: Any,
    tokenizer: Any,
    style: str,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    batch_size: int,
    done: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The reward of each (prompt, response), ``batch_size`` rows per forward (gradients as the caller allows);
    ``done(rows)`` after each forward (progress)."""
    import torch

    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(responses), batch_size):
        enc = encode(tokenizer, style, prompts[i : i + batch_size], responses[i : i + batch_size], max_length)
        outs.append(model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float())
        if done:
            done(len(outs[-1]))
    return torch.cat(outs)


def _set_pad(tokenizer: Any, model: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def recorded_accuracy(folder: str | Path) -> dict | None:
    """The held-out accuracy ``bpo rm`` recorded in the folder's rm.json (None: none recorded)."""
    try:
        held = json.loads((Path(folder) / "rm.json").read_text()).get("heldout")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    ok = isinstance(held, dict) and isinstance(held.get("ci95"), list) and "accuracy" in held and "pairs" in held
    return held if ok else None


def is_reward_model(folder: Path) -> bool:
    """A folder ``bpo rm`` wrote: it has both of its own files."""
    return (folder / "rm.json").is_file() and (folder / FORMAT_FILE).is_file()


class RewardModelAnnotator(ScoreAnnotator):
    """Any ``AutoModelForSequenceClassification`` reward model (the paper: OpenAssistant deberta-v3-large-v2),
    read in its own tokenizer and input format (:class:`RewardModel`), not the policy's.
    """

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 0, device: str | None = None):
        self.rm = RewardModel(model, batch_size, max_length, device)
        self.name = f"rm:{model}"
        self.notes = self.rm.notes  # its recorded accuracy; a length override that differs from its own

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        return self.rm.scores([p.prompt for p in prompts], responses)


def build_gold(cfg: Config) -> Annotator:
    """The reward model ``eval.gold`` names: it judges the final evaluation and never trains the policy."""
    a = cfg.annotator
    return RewardModelAnnotator(cfg.eval.gold, a.batch_size, a.max_length, cfg.device or None)


def _reward_model(cfg: Config) -> Annotator:
    a = cfg.annotator
    return RewardModelAnnotator(a.model, a.batch_size, a.max_length)


register_annotator(
    "reward_model",
    _reward_model,
    help="an AutoModelForSequenceClassification reward model (annotator.model: Hub name or folder)",
    uses_model=True,
    label=lambda a: f"rm:{a.model}",
    ledger_keys=("max_length",),
)
