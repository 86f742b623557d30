"""One typed config for every command: YAML presets plus ``section.key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the file (or override) and
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bpo.errors import ConfigError
from bpo.fields import apply_values, section, setting
from bpo.io import write_text_atomic
from bpo.registry import ANNOTATOR_KINDS, BACKENDS, LOSSES, REFERENCES, TASKS
from bpo.sections import (  # re-exported: every module reads its section's type from bpo.config
    MOVED,
    AnnotatorConfig,
    DataConfig,
    EngineConfig,
    EvalConfig,
    JudgeConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    SamplingConfig,
    SFTConfig,
    TrainConfig,
)


@dataclass
class Config:
    model: ModelConfig = section(ModelConfig, "the policy")
    lora: LoraConfig = section(LoraConfig, "the LoRA of each ensemble member")
    data: DataConfig = section(DataConfig, "prompts and references")
    sampling: SamplingConfig = section(SamplingConfig, "how the behavior model samples pairs")
    engine: EngineConfig = section(EngineConfig, "the inference engine of sampling.backend=llamacpp or openai")
    annotator: AnnotatorConfig = section(AnnotatorConfig, "who judges the pairs")
    sft: SFTConfig = section(SFTConfig, "member SFT (cached by its settings)")
    train: TrainConfig = section(TrainConfig, "the BPO loop")
    eval: EvalConfig = section(EvalConfig, "the final evaluation and bpo eval")
    judge: JudgeConfig = section(
        JudgeConfig, "an LLM judge over HTTP (annotator.kind=llm_judge, bpo eval --judge http)"
    )
    logging: LoggingConfig = section(LoggingConfig, "metric trackers besides metrics.jsonl and TensorBoard")
    output_dir: str = setting("runs/quickstart", "the run folder")
    sft_dir: str = setting("", "where member SFT adapters are cached (empty: <output_dir>/../sft-<hash of settings>)")
    device: str = setting("", "cpu, cuda, cuda:1 ... (empty: cuda when available)")

    def validate(self) -> None:
        """Refuse numbers that cannot give a meaningful run, before anything is loaded."""
        self._check_training()
        self._check_annotator()
        self._check_judge()
        self._check_sampling_and_data()

    def _check_training(self) -> None:
        t = self.train
        for key in COUNTS:
            need(self.get(key) >= 1, key, "at least 1", self.get(key))
        need(1 <= t.phases <= t.steps, "train.phases", f"between 1 and train.steps (T={t.steps})", t.phases)
        for key in POSITIVE:
            need(positive(self.get(key)), key, "a positive finite number", self.get(key))
        wd = t.weight_decay
        need(math.isfinite(wd) and wd >= 0, "train.weight_decay", ">= 0 and finite", wd)
        LOSSES.get(t.loss)  # an unknown name is refused, listing the known ones
        rule = REFERENCES.get(t.reference)
        for name in LOSSES.names():  # each declared part checks its own settings (bpo.train.losses, .references)
            LOSSES.get(name).check(t, chosen=name == t.loss)
        for name in REFERENCES.names():
            REFERENCES.get(name).check(t)
        rule.check_args(t)
        need(t.micro_batch >= 0, "train.micro_batch", ">= 0 (0: automatic)", t.micro_batch)
        need(t.save_every >= 0, "train.save_every", ">= 0 (0: at phase ends only)", t.save_every)
        need(t.save_phase_ends or t.save_every >= 1, "train.save_every", ">= 1 when train.save_phase_ends=false "
             "(every N steps; N = train.steps: a checkpoint at the end only)", t.save_every)  # fmt: skip
        need(self.sampling.top_k >= 0, "sampling.top_k", ">= 0 (0: off)", self.sampling.top_k)

    def _check_annotator(self) -> None:
        a, n = self.annotator, self.sampling.n
        kind = ANNOTATOR_KINDS.get(a.kind)
        need(not kind.deferred or n == 2, "sampling.n", f"2 with annotator.kind={a.kind}", n)
        models = [k for k in ANNOTATOR_KINDS.names() if not ANNOTATOR_KINDS.get(k).deferred]
        rule = f"empty or a model annotator kind ({', '.join(models)})"
        need(not a.prelabel or a.prelabel in models, "annotator.prelabel", rule, a.prelabel)
        need(0 < a.quorum <= 1, "annotator.quorum", "in (0, 1]", a.quorum)
        need(a.review_margin >= 0, "annotator.review_margin", ">= 0", a.review_margin)
        need(a.max_length >= 0, "annotator.max_length", ">= 0 (0: the reward model's own)", a.max_length)
        need(n >= 2, "sampling.n", "at least 2 (a pair)", n)
        rule = f"random with annotator.kind={a.kind} (best_worst needs a score per response)"
        need(
            kind.per_response or n == 2 or self.sampling.pairs == "random", "sampling.pairs", rule, self.sampling.pairs
        )

    def _check_judge(self) -> None:
        j = self.judge
        need(positive(j.timeout), "judge.timeout", "a positive finite number of seconds", j.timeout)
        need(j.retries >= 0, "judge.retries", ">= 0", j.retries)
        need(j.concurrency >= 1, "judge.concurrency", "at least 1", j.concurrency)
        need(j.max_tokens >= 1, "judge.max_tokens", "at least 1", j.max_tokens)
        need(math.isfinite(j.temperature) and j.temperature >= 0, "judge.temperature", ">= 0 and finite", j.temperature)

    def _check_sampling_and_data(self) -> None:
        sm, sft, d = self.sampling, self.sft, self.data
        need(0 < sm.top_p <= 1, "sampling.top_p", "in (0, 1]", sm.top_p)
        backend = BACKENDS.get(sm.backend)
        if backend.check:
            backend.check(self)
        need(0 <= self.lora.dropout < 1, "lora.dropout", "in [0, 1)", self.lora.dropout)
        need(sft.epochs >= 0, "sft.epochs", ">= 0 (0: no SFT)", sft.epochs)
        need(sft.max_length >= 2, "sft.max_length", "at least 2 (a prompt token and a response token)", sft.max_length)
        need(len(sft.seeds) >= 1, "sft.seeds", "at least one seed (one ensemble member per seed)", sft.seeds)
        need(len(set(sft.seeds)) == len(sft.seeds), "sft.seeds", "distinct (each seed is one member)", sft.seeds)
        try:
            d.prompt_template.format(prompt="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"data.prompt_template = {d.prompt_template!r}: {err!r} is not a field; it may hold only {{prompt}} "
                "(write a literal brace as {{ or }})"
            ) from None
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
            if spec not in TASKS and not spec.startswith("hub:") and not Path(spec).exists():
                raise ConfigError(
                    f"data.{role} = {spec!r}: no such file (use a jsonl/csv path, hub:NAME:SPLIT or a task: "
                    f"{', '.join(TASKS.names())})"
                )
        task = ANNOTATOR_KINDS.get(self.annotator.kind).task
        if task_judge and task:
            other = [f"data.{r} = {getattr(self.data, r)!r}" for r in roles if getattr(self.data, r) != task]
            if other:
                raise ConfigError(
                    f"the {self.annotator.kind} judge scores only {TASKS.get(task).what}, but {', '.join(other)}: set "
                    "annotator.kind=reward_model annotator.model=DIR, or annotator.kind=callable annotator.callable=..."
                )

    def check_evaluation(self) -> None:
        """A judge that only picks between two responses gives no scores for the final evaluation."""
        if not ANNOTATOR_KINDS.get(self.annotator.kind).per_response and not self.eval.gold:
            raise ConfigError(
                f"annotator.kind={self.annotator.kind} picks between two responses and gives no scores to evaluate "
                "with: set eval.gold=RM (a reward model judges the evaluation), or pass --no-eval and judge the "
                "result with `bpo eval --judge http`"
            )

    def get(self, key: str) -> Any:
        """A value by its dotted name, e.g. ``train.beta``."""
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def need(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: must be {rule}")


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


# Settings that count things (at least 1) and rates or scales (positive and finite).
COUNTS = (
    "train.steps",
    "train.batch_size",
    "sampling.max_new_tokens",
    "sampling.batch_size",
    "sft.batch_size",
    "lora.r",
    "data.sft_examples",
    "data.eval_examples",
    "eval.max_new_tokens",
    "eval.batch_size",
    "eval.bootstrap",
    "annotator.batch_size",
    "judge.concurrency",
    "annotator.overlap",
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

_FILES = sorted(
    f.name[: -len(".yaml")] for f in resources.files("bpo").joinpath("configs").iterdir() if f.name.endswith(".yaml")
)
PRESETS = ("quickstart", *(name for name in _FILES if name != "quickstart"))  # what configs/ holds, the main one first


def preset_path(name: str) -> Path:
    return Path(str(resources.files("bpo") / "configs" / f"{name}.yaml"))


def yaml_mapping(file: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; anything else is a :class:`ConfigError` naming the file."""
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: not valid YAML ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a YAML file (a path or a preset name), then ``a.b=value`` overrides."""
    cfg = Config()
    if path:
        file = Path(path)
        if not file.exists() and preset_path(str(path)).exists():
            file = preset_path(str(path))
        if not file.exists():
            raise ConfigError(f"{path}: no such config file or preset (presets: {', '.join(PRESETS)})")
        apply_values(cfg, moved(yaml_mapping(file), str(file)), str(file))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        try:
            cursor[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            if raw.lstrip().startswith("!"):
                raise ConfigError(f"override {item!r}: YAML tags are not taken; give a plain value") from None
            cursor[parts[-1]] = raw  # not YAML ("Q: {prompt}"): the text as typed; its type is checked next
        apply_values(cfg, moved(nested, f"override {item!r}"), f"override {item!r}")
    cfg.validate()
    return cfg


def moved(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` without the keys that moved (:data:`MOVED`) where they hold their old default; another value of one
    is refused naming its new key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, (instead, default) in MOVED.items():
        part, key = old.split(".")
        if isinstance(out.get(part), dict) and key in out[part]:
            value = out[part].pop(key)
            if value != default:
                raise ConfigError(f"{where}: {old} is gone; write {instead.format(value=value)}")
    return out


def registered_parts() -> list[str]:
    """``bpo config kinds``: one line per registered part (built in, and from installed plugins), the key that
    names it first."""
    lines = [f"annotator.kind={n}: {ANNOTATOR_KINDS.get(n).help}" for n in ANNOTATOR_KINDS.names()]
    lines += [f"data.train/sft/eval={n}: {TASKS.get(n).what}" for n in TASKS.names()]
    lines += [f"sampling.backend={n}: {BACKENDS.get(n).help}" for n in BACKENDS.names()]
    for name in LOSSES.names():
        loss = LOSSES.get(name)
        takes = ", ".join(["train.beta", *loss.keys(TrainConfig())])
        lines.append(f"train.loss={name}: {loss.help}; {'reads train.reference' if loss.reference else 'no reference'}"
                     f"; {takes}")  # fmt: skip
    for name in REFERENCES.names():
        rule = REFERENCES.get(name)
        takes = "".join(f", train.reference_args.{a}" for a in rule.args)
        lines.append(f"train.reference={name}: {rule.help}; pi_ref is adapter {rule.adapter}{takes}")
    return lines


def save_config(cfg: Config, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def sft_key(cfg: Config) -> str:
    """A short hash of everything that changes the SFT result: the SFT cache's key."""
    parts = {"model": cfg.model.__dict__, "lora": cfg.lora.__dict__, "sft": cfg.sft.__dict__, "device": cfg.device}
    # every data setting that changes which SFT records are read and how (not the train or eval prompts)
    parts["data"] = {k: v for k, v in cfg.data.__dict__.items() if k not in ("train", "eval", "eval_examples")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sft_dir(cfg: Config) -> Path:
    """Where the members' SFT adapters are cached: ``sft_dir``, else beside the run, named by :func:`sft_key`."""
    if cfg.sft_dir:
        return Path(cfg.sft_dir)
    return Path(cfg.output_dir).parent / f"sft-{sft_key(cfg)}"


def resume_config(folder: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(folder) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{folder}: no config.yaml; is this a bpo run folder?")
    try:
        cfg = load_config(path, list(overrides or []))
    except ConfigError as err:
        if not str(err).startswith(f"{path}: "):  # an override's fault: said as it is
            raise
        raise ConfigError(f"{err}; restore the run's config.yaml") from None
    # a run folder is where it is: moved or copied, it is resumed (and written) there, not at the
    # output_dir it was started with; its SFT cache is found where it was, when it is not beside it
    for o in overrides or []:
        key, _, value = o.partition("=")
        if key.strip() == "output_dir" and Path(value.strip()).resolve() != Path(folder).resolve():
            raise ConfigError(f"output_dir cannot be changed on --resume; the run continues in {folder}")
    started = Path(cfg.output_dir)
    cfg.output_dir = str(Path(folder))
    if not cfg.sft_dir and started.resolve() != Path(folder).resolve():
        here, there = Path(folder).parent / f"sft-{sft_key(cfg)}", started.parent / f"sft-{sft_key(cfg)}"
        if not here.exists() and there.exists():
            cfg.sft_dir = str(there)
    return cfg


__all__ = [
    "Config",
    "ModelConfig",
    "LoraConfig",
    "DataConfig",
    "SamplingConfig",
    "EngineConfig",
    "AnnotatorConfig",
    "SFTConfig",
    "TrainConfig",
    "EvalConfig",
    "LoggingConfig",
]
