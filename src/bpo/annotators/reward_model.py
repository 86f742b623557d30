"""Reward models as judges: how one reads a (prompt, response), and its scores.

A reward-model folder is a plain ``AutoModelForSequenceClassification`` with its own tokenizer, or
one ``bpo rm`` wrote (:mod:`bpo.train.rm`): a PEFT adapter (LoRA and score head, a few MB) on the
backbone its ``bpo_rm.json`` names (with how to format inputs, which :func:`encode` reproduces
exactly), and ``rm.json`` (data, split, settings, held-out accuracy).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo.annotators.base import Annotator, ScoreAnnotator, register_annotator
from bpo.config import Config
from bpo.data import PromptRecord
from bpo.errors import BpoError
from bpo.stats import accuracy_text, at_chance

if TYPE_CHECKING:  # torch loads with the model, not when the kind is registered (every config check)
    import torch

FORMAT_FILE = "bpo_rm.json"
PROMPTS_FILE = "train_prompts.txt"  # the keys of the prompts ``bpo rm`` trained on, one per line


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


def load_backbone(name: str, seed: int = 0) -> tuple[Any, Any, str]:
    """A one-output sequence classifier on ``name`` (Hub, folder or built-in offline name), tokenizer, source.

    Its score head is new (random); ``seed`` also decides the weights of the built-in random model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

    from bpo.model.policy import ModelLoadError, byte_tokenizer, offline_model_folder, tiny_llama_config

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


def _load_adapter(folder: Path) -> tuple[Any, Any, list[str]]:
    """A reward model ``bpo rm`` saved as a PEFT adapter (LoRA and score head) on its backbone, merged in;
    the tokenizer is the backbone's. Missing: the score-head weights the adapter lacks (a random head)."""
    from peft import PeftModel
    from safetensors import safe_open

    spec = input_spec(folder)
    if "adapter_of" not in spec:
        raise RewardModelError(
            f"{folder} holds a PEFT adapter but no {FORMAT_FILE} naming its backbone: a reward model bpo reads as an "
            "adapter is one `bpo rm` wrote; pass a full sequence-classification model instead"
        )
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        head = [k for k in f.keys() if ".score." in k or ".classifier." in k]
    model, tokenizer, _ = load_backbone(spec["adapter_of"], spec.get("init_seed", 0))
    model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return model, tokenizer, [] if head else ["score.weight"]


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
            if (Path(folder) / "adapter_config.json").is_file():
                model, self.tokenizer, missing = _load_adapter(Path(folder))
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(folder)
                model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
                missing = sorted(info.get("missing_keys") or [])
        except OSError as err:
            raise ModelLoadError(
                f"cannot load reward model {folder!r} ({err}). Offline, download it elsewhere with "
                f"`hf download {folder} --local-dir DIR` and pass DIR, or train one with `bpo rm`."
            ) from err
        finally:
            hf_logging.set_verbosity(level)
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
            coin = at_chance(self.accuracy)
            self.notes.append(
                f"{'warning' if coin else 'note'}: reward model {folder}: {accuracy_text(self.accuracy)} (rm.json)"
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


def prompt_key(prompt: str) -> str:
    """A prompt's identity across files: sha256 of its words joined by single spaces, 16 hex digits."""
    return hashlib.sha256(" ".join(prompt.split()).encode()).hexdigest()[:16]


def prompts_digest(keys: Sequence[str]) -> str:
    """One digest of a set of prompt keys (rm.json's ``train_prompts_sha256``)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _record(folder: str) -> tuple[set[str] | None, dict]:
    """The training prompts (None: not recorded) and rm.json of a reward-model folder."""
    path = Path(folder)
    keys = set((path / PROMPTS_FILE).read_text().split()) if (path / PROMPTS_FILE).is_file() else None
    try:
        rm = json.loads((path / "rm.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        rm = {}
    return keys, rm if isinstance(rm, dict) else {}


def judge_independence(cfg: Config, eval_prompts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(problems, notes) of the run's reward-model judges: an ``eval.gold`` trained on prompts the annotator
    was trained on, or from the same initialisation, is not an independent check of it; a judge trained on an
    evaluation prompt has seen its reference reply. Only what ``bpo rm`` recorded can be checked (notes say
    what could not)."""
    judges = {}
    if cfg.annotator.kind == "reward_model":
        judges["annotator.model"] = cfg.annotator.model
    if cfg.eval.gold:
        judges["eval.gold"] = cfg.eval.gold
    records = {role: _record(folder) for role, folder in judges.items()}
    problems, notes = [], []
    for role, (keys, _) in records.items():
        if keys is None:
            notes.append(
                f"note: {role} {judges[role]} records no training prompts ({PROMPTS_FILE}, written by bpo rm), so "
                "its independence from the other judge and from the evaluation prompts is not checked"
            )
            continue
        seen = {prompt_key(p) for p in eval_prompts} & keys
        if seen:
            problems.append(
                f"{len(seen)} of the {len(eval_prompts)} evaluation prompts (data.eval) are among the training "
                f"prompts of {role} {judges[role]}: it has seen their human replies, so its verdicts on them are not "
                "held out; retrain it with bpo rm --exclude DATA_EVAL"
            )
    if len(records) == 2:
        (a, a_rm), (g, g_rm) = records["annotator.model"], records["eval.gold"]
        same = Path(judges["annotator.model"]).resolve() == Path(judges["eval.gold"]).resolve()
        shared = len(a & g) if a is not None and g is not None else 0
        if same or shared:
            problems.append(
                f"eval.gold {judges['eval.gold']} and annotator.model {judges['annotator.model']} "
                + ("are the same model" if same else f"were trained on {shared} of the same prompts")
                + ", so the gold is not an independent check of the annotator; train them on different parts of "
                "one split (bpo rm --part 1/2 and --part 2/2 with the same --split-seed)"
            )
        init = [(r.get("backbone"), r.get("init_seed", r.get("seed"))) for r in (a_rm, g_rm)]
        if not same and init[0][0] is not None and init[0] == init[1]:
            problems.append(
                f"eval.gold {judges['eval.gold']} and annotator.model {judges['annotator.model']} start from the same "
                f"initialisation ({init[0][0]}, seed {init[0][1]}), so their scores agree by construction; retrain "
                "one with another bpo rm --seed (or another --model)"
            )
    if problems and cfg.eval.allow_judge_overlap:
        notes += [f"warning: {p} (allowed by eval.allow_judge_overlap)" for p in problems]
        problems = []
    return problems, notes


def independent_judges(cfg: Config, eval_prompts: Sequence[str]) -> list[str]:
    """Refuse, in one line, judges :func:`judge_independence` finds dependent; returns its notes, to be said."""
    problems, notes = judge_independence(cfg, eval_prompts)
    if problems:
        raise RewardModelError("; ".join(problems) + " (or set eval.allow_judge_overlap=true to run anyway)")
    return notes


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
    model_key="annotator.model",
    label=lambda a: f"rm:{a.model}",
    ledger_keys=("max_length",),
)
