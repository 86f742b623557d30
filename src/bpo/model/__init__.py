"""The policy: loading and prompt format, the LoRA ensemble and its merge, log-probs, generation backends."""

from __future__ import annotations

from bpo.registry import BACKENDS, BackendKind


def _hf(policy, ensemble, cfg):
    from bpo.model.sampling import HFBackend  # torch and transformers load with the model, not with a config

    return HFBackend(policy, ensemble)


def _llamacpp(policy, ensemble, cfg):
    from bpo.model.llamacpp import LlamaCppBackend

    return LlamaCppBackend(policy, ensemble, cfg)


def _openai(policy, ensemble, cfg):
    from bpo.model.engine import OpenAIBackend

    return OpenAIBackend(policy, ensemble, cfg)


def _check_engine(cfg) -> None:
    from bpo.config import need, positive

    e = cfg.engine
    need(e.concurrency >= 1, "engine.concurrency", "at least 1", e.concurrency)
    need(positive(e.timeout), "engine.timeout", "a positive finite number of seconds", e.timeout)
    need(e.retries >= 0, "engine.retries", ">= 0", e.retries)
    need(e.threads >= 0, "engine.threads", ">= 0 (0: torch's)", e.threads)


def _check_llamacpp(cfg) -> None:
    from bpo.model.llamacpp_dir import engine_dir

    _check_engine(cfg)
    engine_dir(cfg.engine.dir)  # built, before a model loads


def _check_openai(cfg) -> None:
    from bpo.config import need

    _check_engine(cfg)
    e = cfg.engine
    need(
        e.url.startswith(("http://", "https://")),
        "engine.url",
        "the server's base URL, e.g. http://host:8000/v1",
        e.url,
    )
    need(bool(e.model), "engine.model", "the name the server serves the base model under", e.model)
    if e.weights == "hook":
        need(bool(e.hook.strip()), "engine.hook", "a command (engine.weights=hook)", e.hook)
        return
    k, r = len(cfg.sft.seeds), cfg.lora.r
    rank = k * r if cfg.train.merge == "exact" else r
    need(
        rank <= e.max_lora_rank,
        "engine.max_lora_rank",
        f"at least the behavior adapter's rank {rank} (K*r = {k}*{r}, the exact merge): start the server with a larger "
        "rank (vLLM --max-lora-rank) and say so here, or set train.merge=linear (rank r, the paper's code) or "
        "engine.weights=hook (merged full weights)",
        e.max_lora_rank,
    )


# ``sampling.backend=NAME``; engines live in bpo.model.engine (openai) and bpo.model.llamacpp
BACKENDS.register("hf", BackendKind(_hf, "transformers generate in process (the default)"))
BACKENDS.register(
    "llamacpp",
    BackendKind(
        _llamacpp, "llama.cpp's llama-server on this machine (bash scripts/engine.sh builds it)", _check_llamacpp
    ),
)
BACKENDS.register(
    "openai",
    BackendKind(_openai, "an OpenAI-compatible completions server you run (vLLM, SGLang, llama.cpp)", _check_openai),
)
