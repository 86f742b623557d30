"""The sections of the config (:class:`bpo.config.Config`): every setting with its default and help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bpo.fields import setting


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
    temperature: float = setting(1.0, "sampling temperature (evaluation decodes greedily, whatever this is)")
    top_k: int = setting(0, "keep the k most likely tokens (0: off)")
    top_p: float = setting(0.95, "nucleus sampling mass (1: off)")
    batch_size: int = setting(64, "prompts per generate call while collecting a phase (independent of B)")
    fold_adapter: bool = setting(
        True,
        "sample with the frozen adapter folded into (copy-restored) base weights where that is the same model: fp32 "
        "weights; in bf16/fp16 the rounding would drop part of delta-W, so the adapter runs unfolded there",
    )
    prefill_once: bool = setting(True, "run each prompt once, its KV cache repeated for its n samples")
    backend: str = setting(
        "hf",
        "what generates: hf (transformers generate), llamacpp (llama.cpp's server, built by scripts/engine.sh), "
        "openai (a completions server you run: vLLM, SGLang, ...); engine.* configures the last two",
    )


@dataclass
class EngineConfig:
    """An inference engine that samples (``sampling.backend=llamacpp`` or ``openai``); unused with ``hf``."""

    url: str = setting("", "openai: the server's base URL, e.g. http://127.0.0.1:8000/v1 (it serves engine.model)")
    model: str = setting("", "openai: the name the server serves the base model under (bpo.model.name's weights)")
    weights: Literal["lora", "hook"] = setting(
        "lora",
        "openai: how each phase's behavior model reaches the server: lora (written in PEFT format and loaded through "
        "engine.adapter_api) or hook (merged weights written, then engine.hook runs)",
    )
    adapter_api: Literal["vllm", "sglang"] = setting(
        "vllm", "weights=lora: vllm (POST /v1/load_lora_adapter) or sglang (POST /load_lora_adapter)"
    )
    max_lora_rank: int = setting(
        16, "weights=lora: the largest LoRA rank the server takes (vLLM's --max-lora-rank); a larger one is refused"
    )
    hook: str = setting(
        "",
        "weights=hook: a shell command run once per behavior model, after {merged} (a HF model folder) and {adapter} "
        "(PEFT) are written; it returns once the server serves {merged} as engine.model",
    )
    share_dir: str = setting(
        "", "where adapters/merged models are written for the server to read (empty: $BPO_CACHE/engine/share)"
    )
    api_key_env: str = setting("OPENAI_API_KEY", "openai: environment variable holding the API key (never logged)")
    dir: str = setting("", "llamacpp: the folder scripts/engine.sh printed (empty: the newest in $BPO_CACHE/engine)")
    threads: int = setting(0, "llamacpp: the server's CPU threads (0: as many as torch uses)")
    concurrency: int = setting(32, "requests in flight (llamacpp: the server's parallel slots)")
    timeout: float = setting(600.0, "seconds for one sample's request")
    retries: int = setting(3, "retries of a transient fault (connection, time-out, 5xx, malformed answer)")


@dataclass
class AnnotatorConfig:
    kind: str = setting("quickstart", "who judges the pairs: a registered kind (`bpo config kinds` lists them)")
    model: str = setting(
        "OpenAssistant/reward-model-deberta-v3-large-v2",
        "reward model (Hub name or folder); an LLM judge's model is judge.model",
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
    reference: str = setting(
        "behavior",
        "a registered rule (bpo config kinds): behavior = BPO; sft = online DAP; ema (ablation); tr = TR-DPO "
        "(arXiv 2404.09656): starts at SFT, every train.ref_model_sync_steps steps pi_ref <- alpha pi_theta + "
        "(1 - alpha) pi_ref on delta-W",
    )
    reference_args: dict[str, float] = setting(
        {}, "hyper-parameters of a plugin reference rule by name (train.reference_args.NAME=VALUE)"
    )
    ema_alpha: float = setting(5e-3, "EMA rate of the ema reference")
    ref_model_mixup_alpha: float = setting(
        0.6, "TR-DPO's alpha (TRL's name): 1 = hard update (pi_ref <- pi_theta), < 1 = soft update (a dense delta-W)"
    )
    ref_model_sync_steps: int = setting(
        1, "TR-DPO's tau (TRL's name; TRL defaults to 512 for long runs): update pi_ref every tau steps, whatever F"
    )
    ema_update: Literal["refresh", "step"] = setting(
        "refresh",
        "refresh: EMA toward behavior at each refresh (the paper's code); step: after every step (not the paper's)",
    )
    loss: str = setting(
        "dpo",
        "the loss, a registered name (bpo config kinds): dpo, ipo, slic, or simpo (reference-free; train.reference "
        "is then unused)",
    )
    loss_args: dict[str, float] = setting(
        {}, "hyper-parameters of a plugin loss by name (train.loss_args.NAME=VALUE); the built-ins' are train.* keys"
    )
    beta: float = setting(0.1, "beta of every loss (SimPO's paper: 2.0-2.5)")
    simpo_gamma: float = setting(
        0.5, "SimPO's target reward margin gamma (TRL's simpo_gamma; the paper: 0.3-0.8 x beta)"
    )
    label_smoothing: float = setting(0.0, "DPO's conservative label smoothing eps")
    lr: float = setting(5e-4, "AdamW learning rate (linear decay to 0, no warm-up; the paper: 5e-5)")
    grad_clip: float = setting(1.0, "gradient-norm clip per member")
    weight_decay: float = setting(0.0, "AdamW weight decay (the paper's transformers.AdamW: 0; torch's default 0.01)")
    adam_eps: float = setting(1e-6, "AdamW eps (the paper's transformers.AdamW: 1e-6; torch's default 1e-8)")
    merge: Literal["exact", "linear"] = setting(
        "exact", "exact: mean of members' delta-W; linear: PEFT linear (the paper's code)"
    )
    reference_from_sampler: bool = setting(
        True,
        "BPO in fp32 with the hf backend: the sampler's log-probs are the reference (no extra forward); bf16/fp16 "
        "and the engines teacher-force it with the adapter that sampled",
    )
    log_kl_sft: bool = setting(True, "log KL(behavior || SFT): one extra forward when the reference is not SFT")
    save_every: int = setting(0, "checkpoint every N steps (0: at phase ends and the end only)")
    save_phase_ends: bool = setting(
        True, "also checkpoint at each phase end (at F = T every step; false with save_every = N where one is large)"
    )
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
    allow_judge_overlap: bool = setting(
        False,
        "run even when the judges bpo rm trained are not independent (eval.gold and the annotator share training "
        "prompts or initialisation, or a judge was trained on an evaluation prompt); said as a warning",
    )


@dataclass
class JudgeConfig:
    """An LLM behind an OpenAI-compatible API, asked which of two responses is better: annotator.kind=llm_judge,
    bpo eval --judge http and bpo annotate all read this one section (their flags override its keys)."""

    url: str = setting("", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    model: str = setting("", "the model name the API serves")
    api_key_env: str = setting("OPENAI_API_KEY", "environment variable holding the API key (never logged)")
    template: str = setting(
        "", "a file with the judge's prompt ({prompt}, {a}, {b}); empty: bpo's, which asks for one letter"
    )
    temperature: float = setting(0.0, "the judge's sampling temperature")
    max_tokens: int = setting(16, "tokens the judge may answer with")
    timeout: float = setting(60.0, "seconds for a whole request, answer included")
    retries: int = setting(5, "retries of a transient fault (and of an unreadable answer)")
    concurrency: int = setting(4, "requests in flight at once")
    cache: str = setting("", "answer cache (empty: $BPO_CACHE/judge-cache.jsonl, shared by every run and bpo eval)")


# Keys that are gone (the judge's, before they were one section; sampling.do_sample): a saved config (a run's
# config.yaml) may still hold them at their defaults, which mean nothing now; any other value is refused, saying
# what to write instead ({value}: the value given).
MOVED = {
    "annotator.url": ("judge.url={value!r}", ""),
    "annotator.api_key_env": ("judge.api_key_env={value!r}", "OPENAI_API_KEY"),
    "annotator.concurrency": ("judge.concurrency={value!r}", 4),
    "annotator.cache": ("judge.cache={value!r}", ""),
    "annotator.judge_template": ("judge.template={value!r}", ""),
    "annotator.judge_temperature": ("judge.temperature={value!r}", 0.0),
    "annotator.judge_max_tokens": ("judge.max_tokens={value!r}", 16),
    "eval.judge_timeout": ("judge.timeout={value!r}", 60.0),
    "eval.judge_retries": ("judge.retries={value!r}", 5),
    "sampling.do_sample": ("nothing: training always samples, evaluation and bpo generate decode greedily", True),
}


@dataclass
class LoggingConfig:
    wandb: bool = setting(False, "also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works)")
    wandb_project: str = setting("bpo", "the W&B project; the W&B run is named after the run folder")
