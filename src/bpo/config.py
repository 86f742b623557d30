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
from typing import Any, Literal

import yaml

from bpo.errors import ConfigError
from bpo.fields import apply_values, section, setting
from bpo.io import write_text_atomic
from bpo.registry import ANNOTATOR_KINDS, BACKENDS, TASKS


@dataclass
class ModelConfig:
    name: str = setting(
        "smollm2-135m-instruct",
        "Hub name, local folder, or smollm2-135m-instruct / gemma3-270m / tiny-random-llama (offline)",
    )
    dtype: str = setting("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16")
    chat_template: Literal["auto", "always", "never"] = setting(
        "auto", "use the tokenizer's chat template: auto (if it has one), always, never"
    )


@dataclass
class LoraConfig:
    """The LoRA of each ensemble member; :meth:`peft` is the same as PEFT's ``LoraConfig``."""

    r: int = setting(16, "LoRA rank of each ensemble member (the paper: 256)")
    alpha: int = setting(32, "LoRA alpha (the scale is alpha / r; the paper: 512)")
    dropout: float = setting(
        0.1, "LoRA dropout in member SFT only; DAP runs without dropout in every adapter, as the paper"
    )
    target_modules: str = setting("all-linear", "modules that get LoRA (PEFT's target_modules)")

    def peft(self, dropout: float | None = None) -> Any:
        """PEFT's ``LoraConfig`` for these settings (``dropout`` overrides ``self.dropout``)."""
        from peft import LoraConfig as PeftLoraConfig  # heavy: not needed to read or check a config

        drop = self.dropout if dropout is None else dropout
        return PeftLoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=drop,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


@dataclass
class DataConfig:
    """Where prompts come from: a registered source (``quickstart``), a jsonl/csv path or ``hub:NAME:SPLIT``."""

    train: str = setting("quickstart", "prompts for online training (each used once: T*B are needed)")
    sft: str = setting("quickstart", "(prompt, reference) records for member SFT")
    eval: str = setting("quickstart", "held-out prompts (with references) for the final evaluation")
    prompt_field: str = setting("prompt", "field of the prompt in jsonl/csv files")
    reference_field: str = setting("label", "field of the human reference in jsonl/csv files")
    prompt_template: str = setting("{prompt}", "text the model sees around each prompt")
    max_prompt_tokens: int | None = setting(
        1024,
        "drop longer prompts, saying how many (a very long prompt takes minutes a sample; the paper: 512 TL;DR, "
        "64 helpful, 256 harmless); empty: no limit",
    )
    max_response_tokens: int | None = setting(None, "drop records with longer references")
    skip_bad_rows: bool = setting(False, "skip (and count) malformed rows instead of stopping")
    sft_examples: int = setting(64, "records used for member SFT")
    eval_examples: int = setting(64, "prompts in the final evaluation")
    seed: int = setting(0, "order of the train and SFT records (and the quickstart task's posts)")


@dataclass
class SamplingConfig:
    """Decoding settings; the defaults are the paper's public code: temperature 1, top-p 0.95, top-k off."""

    max_new_tokens: int = setting(48, "longest sampled response (the paper: 128)")
    n: int = setting(
        2, "responses sampled per prompt (the paper: 2); more is best-of-n, the pair set by sampling.pairs"
    )
    pairs: Literal["best_worst", "random"] = setting(
        "best_worst", "with n > 2: train on the best vs the worst response (a scoring annotator) or on a random pair"
    )
    temperature: float = setting(1.0, "sampling temperature")
    top_k: int = setting(0, "keep the k most likely tokens (0: off)")
    top_p: float = setting(0.95, "nucleus sampling mass (1: off)")
    do_sample: bool = setting(True, "training always samples; False is greedy (evaluation)")
    batch_size: int = setting(64, "prompts per generate call while collecting a phase (independent of B)")
    fold_adapter: bool = setting(True, "sample with the frozen adapter folded into (copy-restored) base weights")
    prefill_once: bool = setting(True, "run each prompt once, its KV cache repeated for its n samples")
    backend: str = setting("hf", "what generates: a registered backend (hf: transformers generate)")


@dataclass
class AnnotatorConfig:
    kind: str = setting("quickstart", "who judges the pairs: a registered kind (`bpo config kinds` lists them)")
    model: str = setting(
        "OpenAssistant/reward-model-deberta-v3-large-v2",
        "reward model (Hub name or folder); for llm_judge the model name the API serves",
    )
    url: str = setting("", "llm_judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = setting("OPENAI_API_KEY", "llm_judge: environment variable holding the API key (never logged)")
    concurrency: int = setting(4, "llm_judge: requests in flight at once")
    cache: str = setting(
        "", "llm_judge and bpo eval --judge http: answer cache (empty: $BPO_CACHE/judge-cache.jsonl, shared)"
    )
    callable: str = setting(
        "",
        "package.module:fn or path/to/file.py:fn; kind=callable: fn(prompt_record, response) -> float; "
        "kind=pairwise: fn(prompt, response_a, response_b) -> 0 | 1 | None, or (that, rationale)",
    )
    overlap: int = setting(1, "human: different people who label each pair (2+: their agreement is measured)")
    quorum: float = setting(1.0, "human: share of a phase's pairs labelled before training goes on (rest unused)")
    prelabel: str = setting(
        "", "human: a model annotator that judges each phase first (its settings: the other annotator.* keys)"
    )
    review: Literal["all", "disagreements"] = setting(
        "disagreements", "human with prelabel: people label all pairs, or only those the pre-labeller leaves open"
    )
    review_margin: float = setting(0.0, "human with prelabel: a scorer's pair is open when its scores differ <= this")
    both_orders: bool = setting(
        False, "pairwise: ask the function in both orders (A/B, then B/A); a split verdict is a tie, not trained on"
    )
    judge_template: str = setting(
        "",
        "llm_judge and bpo eval --judge http: a file with the judge's prompt ({prompt}, {a}, {b}); empty: "
        "bpo's, which asks for one letter",
    )
    judge_temperature: float = setting(0.0, "llm_judge and bpo eval --judge http: the judge's sampling temperature")
    judge_max_tokens: int = setting(16, "llm_judge and bpo eval --judge http: tokens the judge may answer with")
    batch_size: int = setting(16, "responses per reward-model forward")
    max_length: int = setting(
        0,
        "reward-model input tokens (prompt + response), truncated beyond; 0: the length it was trained at "
        "(bpo_rm.json), else 1024",
    )


@dataclass
class SFTConfig:
    epochs: int = setting(2, "epochs of member SFT; 0: none, members start as the model itself (as TRL's online DPO)")
    batch_size: int = setting(8, "records per SFT step")
    lr: float = setting(1e-3, "SFT learning rate (cosine decay)")
    seeds: list[int] = setting([0, 1], "one SFT run, one ensemble member, per seed (the paper: K = 5)")
    max_length: int = setting(512, "prompt + reference tokens, the prompt's start cut beyond")


@dataclass
class TrainConfig:
    steps: int = setting(16, "T: optimizer steps")
    batch_size: int = setting(8, "B: prompts per step, 2 responses each")
    micro_batch: int = setting(0, "prompts per forward/backward in a step, same update (0: 1 on CPU, all B on GPU)")
    phases: int = setting(2, "F: behavior refreshes (annotation phases); 1 = offline DAP, T = on-policy")
    reference: Literal["behavior", "sft", "ema"] = setting(
        "behavior", "behavior = BPO; sft = online DAP; ema (ablation)"
    )
    ema_alpha: float = setting(5e-3, "EMA rate of the ema reference")
    ema_update: Literal["refresh", "step"] = setting(
        "refresh",
        "refresh: EMA toward behavior at each refresh (the paper's code); step: after every step (not the paper's)",
    )
    loss: Literal["dpo", "ipo", "slic"] = setting("dpo", "the DAP loss")
    beta: float = setting(0.1, "beta of every loss")
    label_smoothing: float = setting(0.0, "DPO's conservative label smoothing eps")
    lr: float = setting(5e-4, "AdamW learning rate (linear decay to 0, no warm-up; the paper: 5e-5)")
    grad_clip: float = setting(1.0, "gradient-norm clip per member")
    weight_decay: float = setting(0.0, "AdamW weight decay (the paper's transformers.AdamW: 0; torch's default 0.01)")
    adam_eps: float = setting(1e-6, "AdamW eps (the paper's transformers.AdamW: 1e-6; torch's default 1e-8)")
    merge: Literal["exact", "linear"] = setting(
        "exact", "exact: mean of members' delta-W; linear: PEFT linear (the paper's code)"
    )
    reference_from_sampler: bool = setting(
        True, "BPO in fp32: the sampler's log-probs are the reference (no extra forward); bf16/fp16 recompute them"
    )
    log_kl_sft: bool = setting(True, "log KL(behavior || SFT): one extra forward when the reference is not SFT")
    save_every: int = setting(0, "checkpoint every N steps (0: at phase ends and the end only)")
    seed: int = setting(0, "sampling noise of the run")


@dataclass
class EvalConfig:
    max_new_tokens: int = setting(48, "longest greedy response in evaluation")
    batch_size: int = setting(32, "prompts per greedy generate call")
    bootstrap: int = setting(2000, "bootstrap resamples for every interval")
    gold: str = setting(
        "",
        "reward model (folder or Hub name) that judges the final evaluation apart from the annotator, so that "
        "over-optimisation of the annotator shows; empty: the annotator judges (the paper's set-up)",
    )
    judge_timeout: float = setting(
        60.0, "seconds for a whole HTTP judge request, answer included (bpo eval and annotator.kind=llm_judge)"
    )
    judge_retries: int = setting(5, "retries of a transient HTTP judge fault (and of an unreadable answer)")


@dataclass
class LoggingConfig:
    wandb: bool = setting(False, "also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works)")
    wandb_project: str = setting("bpo", "the W&B project; the W&B run is named after the run folder")


@dataclass
class Config:
    model: ModelConfig = section(ModelConfig, "the policy")
    lora: LoraConfig = section(LoraConfig, "the LoRA of each ensemble member")
    data: DataConfig = section(DataConfig, "prompts and references")
    sampling: SamplingConfig = section(SamplingConfig, "how the behavior model samples pairs")
    annotator: AnnotatorConfig = section(AnnotatorConfig, "who judges the pairs")
    sft: SFTConfig = section(SFTConfig, "member SFT (cached by its settings)")
    train: TrainConfig = section(TrainConfig, "the BPO loop")
    eval: EvalConfig = section(EvalConfig, "the final evaluation and bpo eval")
    logging: LoggingConfig = section(LoggingConfig, "metric trackers besides metrics.jsonl and TensorBoard")
    output_dir: str = setting("runs/quickstart", "the run folder")
    sft_dir: str = setting("", "where member SFT adapters are cached (empty: <output_dir>/../sft-<hash of settings>)")
    device: str = setting("", "cpu, cuda, cuda:1 ... (empty: cuda when available)")

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
        need(t.micro_batch >= 0, "train.micro_batch", ">= 0 (0: automatic)", t.micro_batch)
        need(t.save_every >= 0, "train.save_every", ">= 0 (0: at phase ends only)", t.save_every)
        need(sm.top_k >= 0, "sampling.top_k", ">= 0 (0: off)", sm.top_k)
        kind = ANNOTATOR_KINDS.get(self.annotator.kind)
        need(not kind.deferred or sm.n == 2, "sampling.n", f"2 with annotator.kind={self.annotator.kind}", sm.n)
        pre, models = (
            self.annotator.prelabel,
            [k for k in ANNOTATOR_KINDS.names() if not ANNOTATOR_KINDS.get(k).deferred],
        )
        need(
            not pre or pre in models,
            "annotator.prelabel",
            f"empty or a model annotator kind ({', '.join(models)})",
            pre,
        )
        need(0 < self.annotator.quorum <= 1, "annotator.quorum", "in (0, 1]", self.annotator.quorum)
        need(self.annotator.review_margin >= 0, "annotator.review_margin", ">= 0", self.annotator.review_margin)
        a = self.annotator
        need(a.max_length >= 0, "annotator.max_length", ">= 0 (0: the reward model's own)", a.max_length)
        need(a.judge_max_tokens >= 1, "annotator.judge_max_tokens", "at least 1", a.judge_max_tokens)
        need(
            math.isfinite(a.judge_temperature) and a.judge_temperature >= 0,
            "annotator.judge_temperature",
            ">= 0 and finite",
            a.judge_temperature,
        )
        need(sm.n >= 2, "sampling.n", "at least 2 (a pair)", sm.n)
        need(
            kind.per_response or sm.n == 2 or sm.pairs == "random",
            "sampling.pairs",
            f"random with annotator.kind={self.annotator.kind} (best_worst needs a score per response)",
            sm.pairs,
        )
        need(0 < sm.top_p <= 1, "sampling.top_p", "in (0, 1]", sm.top_p)
        need(
            sm.backend in BACKENDS,
            "sampling.backend",
            f"a registered backend ({', '.join(BACKENDS.names())})",
            sm.backend,
        )
        need(0 <= lora.dropout < 1, "lora.dropout", "in [0, 1)", lora.dropout)
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
    "annotator.concurrency",
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

PRESETS = ("quickstart", "tldr", "hh-helpful", "hh-harmless", "tldr-local", "hh-helpful-local", "hh-harmless-local")


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
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{file}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the top level must be a mapping")
        apply_values(cfg, data, str(file))
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
        apply_values(cfg, nested, f"override {item!r}")
    cfg.validate()
    return cfg


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
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}); restore the run's config.yaml") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: the top level must be a mapping; restore the run's config.yaml")
    cfg = load_config(path, list(overrides or []))
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
