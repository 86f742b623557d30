"""One typed config for every command: YAML presets plus ``section.key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the file (or override) and
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from bpo.errors import BpoError
from bpo.io import write_text_atomic


class ConfigError(BpoError, ValueError):
    """A config file or override is wrong; the message says where and what."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # Hub name, local folder, or a built-in offline name
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    chat_template: Literal["auto", "always", "never"] = "auto"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1  # used in SFT only; DAP training runs without dropout, as in the paper
    target_modules: str = "all-linear"


@dataclass
class DataConfig:
    """Where prompts come from. ``quickstart`` is the embedded task; otherwise a jsonl/csv path
    (``prompt``/``label`` fields by default) or ``hub:NAME:SPLIT``."""

    train: str = "quickstart"  # prompts for online training
    sft: str = "quickstart"  # (prompt, reference) records for member SFT
    eval: str = "quickstart"  # held-out prompts for the final evaluation
    prompt_field: str = "prompt"
    reference_field: str = "label"
    prompt_template: str = "{prompt}"  # e.g. "{prompt}" for TL;DR posts that end in "TL;DR:"
    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None
    skip_bad_rows: bool = False
    sft_examples: int = 64
    eval_examples: int = 64
    seed: int = 0


@dataclass
class SamplingConfig:
    """Decoding settings (``bpo.sampling.SamplingConfig`` is this class); the defaults are the
    paper's public code: temperature 1.0, top-p 0.95, top-k off (it allows 128 new tokens)."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 0.95
    do_sample: bool = True  # training always samples; False is greedy (evaluation)
    batch_size: int = 64  # prompts per generate call during phase collection (independent of B)


@dataclass
class AnnotatorConfig:
    kind: Literal["quickstart", "reward_model", "callable"] = "quickstart"
    model: str = "OpenAssistant/reward-model-deberta-v3-large-v2"  # for reward_model
    callable: str = ""  # for callable: "package.module:function(prompt_record, response) -> float"
    batch_size: int = 16
    max_length: int = 1024


@dataclass
class SFTConfig:
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # one SFT run (ensemble member) per seed
    max_length: int = 512


@dataclass
class TrainConfig:
    steps: int = 16  # T
    batch_size: int = 8  # B prompts per step (2 responses each)
    phases: int = 2  # F: behavior refreshes; 1 = offline DAP, = steps for on-policy
    reference: Literal["behavior", "sft", "ema"] = "behavior"
    ema_alpha: float = 5e-3
    # refresh: ema <- (1-alpha) ema + alpha behavior at each behavior refresh (the paper and its code);
    # step: the same after every optimizer step, toward the current merged policy (not the paper's)
    ema_update: Literal["refresh", "step"] = "refresh"
    loss: Literal["dpo", "ipo", "slic"] = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    lr: float = 5e-4
    grad_clip: float = 1.0
    weight_decay: float = 0.0  # the paper's code: transformers.AdamW, weight decay 0 (torch's default is 0.01)
    adam_eps: float = 1e-6  # the paper's code: transformers.AdamW, eps 1e-6 (torch's default is 1e-8)
    merge: Literal["exact", "linear"] = "exact"
    # BPO: reuse the sampler's log-probs as the reference log-probs (no extra forward). Used in fp32
    # only: in bf16/fp16 they differ from the teacher-forced pass, which is then run instead
    reference_from_sampler: bool = True
    log_kl_sft: bool = True  # one extra no-grad forward per step when the reference is not SFT
    save_every: int = 0  # checkpoint every N steps (0: only at phase boundaries and the end)
    seed: int = 0


@dataclass
class EvalConfig:
    max_new_tokens: int = 48
    batch_size: int = 32
    bootstrap: int = 2000
    judge_timeout: float = 60.0  # seconds per HTTP judge request
    judge_retries: int = 5  # retries of a transient judge fault (and of an unreadable answer)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/quickstart"
    sft_dir: str = ""  # where member SFT adapters are cached; default: <output_dir>/../sft-<hash of settings>
    device: str = ""  # empty: cuda when available, else cpu

    def validate(self) -> None:
        """Refuse numbers that cannot give a meaningful run, before anything is loaded."""
        t, sm, sft, lora, d, e = self.train, self.sampling, self.sft, self.lora, self.data, self.eval

        def need(ok: bool, key: str, rule: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"{key} = {value!r}: must be {rule}")

        def positive(value: float) -> bool:
            return math.isfinite(value) and value > 0

        for key in COUNTS:
            need(self.get(key) >= 1, key, "at least 1", self.get(key))
        need(1 <= t.phases <= t.steps, "train.phases", f"between 1 and train.steps (T={t.steps})", t.phases)
        for key in POSITIVE:
            need(positive(self.get(key)), key, "a positive finite number", self.get(key))
        wd = t.weight_decay
        need(math.isfinite(wd) and wd >= 0, "train.weight_decay", ">= 0 and finite", wd)
        need(0 < t.ema_alpha <= 1, "train.ema_alpha", "in (0, 1]", t.ema_alpha)
        need(0 <= t.label_smoothing < 0.5, "train.label_smoothing", "in [0, 0.5)", t.label_smoothing)
        need(positive(e.judge_timeout), "eval.judge_timeout", "a positive finite number of seconds", e.judge_timeout)
        need(e.judge_retries >= 0, "eval.judge_retries", ">= 0", e.judge_retries)
        need(t.save_every >= 0, "train.save_every", ">= 0 (0: at phase ends only)", t.save_every)
        need(sm.top_k >= 0, "sampling.top_k", ">= 0 (0: off)", sm.top_k)
        need(0 < sm.top_p <= 1, "sampling.top_p", "in (0, 1]", sm.top_p)
        need(0 <= lora.dropout < 1, "lora.dropout", "in [0, 1)", lora.dropout)
        need(sft.max_length >= 2, "sft.max_length", "at least 2 (a prompt token and a response token)", sft.max_length)
        need(len(sft.seeds) >= 1, "sft.seeds", "at least one seed (one ensemble member per seed)", sft.seeds)
        need(len(set(sft.seeds)) == len(sft.seeds), "sft.seeds", "distinct (each seed is one member)", sft.seeds)
        for key in ("max_prompt_tokens", "max_response_tokens"):
            value = getattr(d, key)
            need(value is None or value >= 1, f"data.{key}", "empty (no limit) or at least 1", value)

    def check_sources(self, roles: tuple[str, ...] = ("train", "sft", "eval"), task_judge: bool = True) -> None:
        """Data files exist, and the quickstart judge is asked only about quickstart posts.

        Checked before a model is loaded: a missing ``data.eval`` would otherwise surface after
        training, and the quickstart judge would score any other prompt as nonsense.
        """
        for role in roles:
            spec = getattr(self.data, role)
            if spec != "quickstart" and not spec.startswith("hub:") and not Path(spec).exists():
                raise ConfigError(
                    f"data.{role} = {spec!r}: no such file (use a jsonl/csv path, hub:NAME:SPLIT or quickstart)"
                )
        if task_judge and self.annotator.kind == "quickstart":
            other = [f"data.{r} = {getattr(self.data, r)!r}" for r in roles if getattr(self.data, r) != "quickstart"]
            if other:
                raise ConfigError(
                    f"the quickstart judge scores only the embedded task's posts, but {', '.join(other)}: set "
                    "annotator.kind=reward_model annotator.model=DIR, or annotator.kind=callable annotator.callable=..."
                )

    def get(self, key: str) -> Any:
        """A value by its dotted name, e.g. ``train.beta``."""
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that count things (at least 1) and rates or scales (positive and finite).
COUNTS = (
    "train.steps",
    "train.batch_size",
    "sampling.max_new_tokens",
    "sampling.batch_size",
    "sft.epochs",
    "sft.batch_size",
    "lora.r",
    "data.sft_examples",
    "data.eval_examples",
    "eval.max_new_tokens",
    "eval.batch_size",
    "eval.bootstrap",
    "annotator.batch_size",
    "annotator.max_length",
)
POSITIVE = (
    "train.beta",
    "train.lr",
    "train.grad_clip",
    "train.adam_eps",
    "sampling.temperature",
    "sft.lr",
    "lora.alpha",
)

PRESETS = ("quickstart", "tldr", "hh-helpful", "hh-harmless", "tldr-local", "hh-helpful-local", "hh-harmless-local")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            out = tp(value)
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return out
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} is a section; give it a mapping")
            _apply(current, value, f"{where}: {key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}: {key}"))


def preset_path(name: str) -> Path:
    return Path(str(resources.files("bpo") / "configs" / f"{name}.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a YAML file (a path or a preset name), then ``a.b=value`` overrides."""
    cfg = Config()
    if path:
        file = Path(path)
        if not file.exists() and preset_path(str(path)).exists():
            file = preset_path(str(path))
        if not file.exists():
            raise ConfigError(f"{path}: no such config file or preset (presets: {', '.join(PRESETS)})")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the top level must be a mapping")
        _apply(cfg, data, str(file))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        _apply(cfg, nested, f"override {item!r}")
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# Settings added after runs were already written, with the value those runs used: a run saved by
# an older bpo resumes exactly as it started, not with today's defaults.
BEFORE_THEY_EXISTED = {"train.weight_decay": 0.01, "train.adam_eps": 1e-8, "train.ema_update": "step"}


def resume_config(folder: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(folder) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{folder}: no config.yaml; is this a bpo run folder?")
    saved = yaml.safe_load(path.read_text()) or {}
    older = [
        f"{k}={v}" for k, v in BEFORE_THEY_EXISTED.items() if k.split(".")[1] not in saved.get(k.split(".")[0], {})
    ]
    return load_config(path, older + list(overrides or []))
