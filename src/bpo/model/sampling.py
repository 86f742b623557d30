"""Batched sampling of n responses per prompt under a named adapter.

Generation sits behind :class:`Backend` so a faster engine (vLLM, say) can replace the HF
``generate`` loop without touching the trainer. The HF backend can also return the sampling
model's own log-probs of each response: in BPO the behavior model is the reference, so these
are the reference log-probs and no extra forward pass is needed.
"""

from __future__ import annotations

import contextlib
import weakref
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bpo.config import Config, SamplingConfig
from bpo.model.ensemble import Ensemble
from bpo.model.logprobs import pad, prompt_cache
from bpo.model.policy import Policy
from bpo.registry import BACKENDS


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finished: bool  # ended with EOS rather than at max_new_tokens
    logp: float | None = None  # summed log-prob under the sampling model, when asked for
    token_logps: list[float] = field(default_factory=list, repr=False)
    engine_logps: list[float] | None = field(default=None, repr=False)  # an engine's own, beside bpo's (engine.py)


class Backend:
    """What generates: a subclass implements :meth:`sample` (``make_backend`` builds the one the config names)."""

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        params: SamplingConfig,
        adapter: str | None,
        return_logps: bool = False,
        keys: Sequence[str] | None = None,
    ) -> list[list[Completion]]:
        """n completions for each prompt (token ids, already formatted), under ``adapter``.

        ``keys`` (one per prompt) make sampling reproducible per prompt: the same key gives the
        same samples whatever the batch it is in, the number of processes or a resume. Without
        them keys are drawn from torch's RNG, so ``torch.manual_seed`` still reproduces a call.
        """
        keys = list(keys) if keys is not None else drawn_keys(len(prompt_ids))
        return self.sample(prompt_ids, n, params, adapter, return_logps, keys)

    def sample(self, prompt_ids, n: int, params: SamplingConfig, adapter, return_logps: bool, keys: list[str]):
        """:meth:`generate` with a key per prompt."""
        raise NotImplementedError


_MASK = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (lowbias32), in int64 so nothing overflows."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK
    return (x >> 16) ^ x


class _KeyedGumbel(LogitsProcessor):
    """Sampling by the Gumbel-max trick with noise that is a pure function of (row key, step, token).

    argmax(logits + Gumbel) is an exact sample from softmax(logits); because the noise is hashed
    rather than drawn from a shared RNG stream, a row's sample does not depend on its batch.
    Only the candidates get noise (top-k's k, or the tokens top-p kept; the rest are -inf anyway).
    Returns scores that are 0 at the sampled token and -inf elsewhere, so HF's greedy step picks it.
    """

    def __init__(self, row_keys: torch.Tensor, prompt_width: int, top_k: int = 0):
        self.row_keys = row_keys
        self.prompt_width = prompt_width
        self.top_k = top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = torch.tensor(input_ids.shape[1] - self.prompt_width, device=scores.device)
        row = _hash32((self.row_keys.to(scores.device) + _hash32(step)) & _MASK)
        # noise only where a token can win: the top-k, or the tokens top-p left finite (often a few
        # hundred of a 50k-262k vocabulary); the noise of a token does not depend on which others get it
        finite = int(torch.isfinite(scores).sum(-1).max())
        keep = self.top_k if 0 < self.top_k < scores.shape[-1] else finite
        if keep < scores.shape[-1] // 2:
            values, tokens = scores.topk(max(keep, 1), dim=-1)
        else:
            values = scores
            tokens = torch.arange(scores.shape[-1], device=scores.device, dtype=torch.int64).expand_as(scores)
        u = (_hash32((tokens + row[:, None]) & _MASK).double() + 0.5) / 2.0**32
        pick = tokens.gather(-1, (values.double() - torch.log(-torch.log(u))).argmax(-1, keepdim=True))
        return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)


def row_key(key: str, sample: int) -> int:
    """The noise key of sample ``sample`` of the prompt keyed ``key``."""
    return zlib.crc32(f"{key}:{sample}".encode())


def drawn_keys(count: int) -> list[str]:
    """Keys for a call that gave none: drawn from torch's RNG, so torch.manual_seed still reproduces."""
    return [str(k) for k in torch.randint(0, 2**31 - 1, (count,)).tolist()]


def identical(completions: Sequence[Completion]) -> bool:
    """True when every completion of a prompt has the same tokens: such a pair teaches nothing."""
    return all(c.token_ids == completions[0].token_ids for c in completions[1:])


class _RecordLogps(LogitsProcessor):
    """Keeps log p(token) of each sampled token under the *unwarped* model distribution.

    HF applies custom processors before temperature/top-k/top-p, so ``scores`` here are the
    model's raw logits. The token sampled from step t appears in ``input_ids`` at step t+1;
    :meth:`finish` takes the last one. Only one [batch, vocab] tensor is held at a time.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.logps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.logps.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.logps.append(self.previous.gather(-1, last_tokens[:, None]).squeeze(-1))
        return torch.stack(self.logps, dim=1)


class HFBackend(Backend):
    """``model.generate`` in left-padded batches; the adapter is switched through the ensemble."""

    def __init__(self, policy: Policy, ensemble: Ensemble | None = None):
        self.policy = policy
        self.ensemble = ensemble

    def sample(self, prompt_ids, n: int, params: SamplingConfig, adapter, return_logps: bool, keys: list[str]):
        out: list[list[Completion]] = []
        for start in range(0, len(prompt_ids), params.batch_size):
            chunk = prompt_ids[start : start + params.batch_size]
            chunk_keys = keys[start : start + params.batch_size]
            if self.ensemble is None:
                out += self._generate(self.policy.model, chunk, chunk_keys, n, params, return_logps)
            else:
                fold = params.fold_adapter and adapter is not None and self.ensemble.folds_exactly(adapter)
                with (self.ensemble.folded if fold else self.ensemble.active)(adapter) as model:
                    out += self._generate(model, chunk, chunk_keys, n, params, return_logps)
        return out

    @torch.no_grad()
    def _generate(self, model, chunk, keys, n, params: SamplingConfig, return_logps: bool) -> list[list[Completion]]:
        tok = self.policy.tokenizer
        ids, attn = pad(chunk, tok.pad_token_id, "left")
        width = ids.shape[1]
        device = self.policy.device
        cache = {}
        if params.prefill_once and n > 1 and min(len(p) for p in chunk) > 1:
            # each prompt runs once; its KV cache is repeated for its n samples. The last prompt token
            # stays out: generate runs it to get the first logits.
            cache = prompt_cache(model, ids[:, :-1].to(device), attn[:, :-1].to(device), n)
        ids, attn = ids.repeat_interleave(n, dim=0), attn.repeat_interleave(n, dim=0)  # n rows per prompt
        # HF decodes greedily; sampling is our processors: warpers, then keyed Gumbel noise. Temperature 0 is
        # greedy decoding (as in the OpenAI API): evaluation's.
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        recorder = _RecordLogps() if return_logps else None
        processors: list[LogitsProcessor] = [recorder] if recorder else []
        if params.temperature > 0:
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
            row_keys = torch.tensor([row_key(k, j) for k in keys for j in range(n)], dtype=torch.int64)
            processors.append(_KeyedGumbel(row_keys, width, params.top_k))
        with own_decoding(self.policy.model):
            sequences = model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
                **cache,
            )
        new = sequences[:, width:].cpu()
        logps = recorder.finish(sequences[:, -1]).cpu() if recorder else None
        groups: list[list[Completion]] = [[] for _ in chunk]
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            finished = tok.eos_token_id in tokens
            if finished:
                tokens = tokens[: tokens.index(tok.eos_token_id) + 1]
            comp = Completion(tokens, tok.decode(tokens, skip_special_tokens=True).strip(), finished)
            if logps is not None:
                comp.token_logps = logps[row, : len(tokens)].tolist()
                comp.logp = float(sum(comp.token_logps))
            groups[row // n].append(comp)
        return groups


# GenerationConfig fields that decide neither which token is drawn nor when decoding stops; generate fills every
# field bpo leaves unset from the model's generation_config, whose others (repetition_penalty, min_new_tokens,
# no_repeat_ngram_size, bad_words_ids, stop_strings, num_beams, ...) would put processors before bpo's own
_NEUTRAL_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "cache_implementation", "cache_config", "use_cache")


@contextlib.contextmanager
def own_decoding(model: PreTrainedModel) -> Iterator[None]:
    """Decode with bpo's settings alone: the model's generation_config is a neutral one meanwhile.

    A Hub model's own settings (several instruct models ship a repetition penalty) would change both
    the samples and the log-probs the sampler records as BPO's reference, away from the model's
    distribution that the loss teacher-forces.
    """
    saved = model.generation_config
    neutral = GenerationConfig()
    for name in _NEUTRAL_FIELDS:
        if getattr(saved, name, None) is not None:
            setattr(neutral, name, getattr(saved, name))
    model.generation_config = neutral
    try:
        yield
    finally:
        model.generation_config = saved


def ignored_generation_settings(model: PreTrainedModel) -> dict[str, Any]:
    """The fields of the model's own generation_config that bpo's decoding leaves out (:func:`own_decoding`)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    neutral = getattr(GenerationConfig, "_get_default_generation_params", dict)()  # generate's own defaults
    return {
        k: v
        for k, v in sorted(config.to_diff_dict().items())
        if k not in _NEUTRAL_FIELDS and k != "transformers_version" and not k.startswith("_")
        and v != neutral.get(k) and v not in (None, False)  # output_attentions=False and the like change nothing
    }  # fmt: skip


_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(ensemble, name): backend}


def make_backend(policy: Policy, ensemble: Ensemble | None = None, cfg: Config | None = None) -> Backend:
    """The generation backend ``cfg.sampling.backend`` names (hf without a config), over ``policy`` and the
    ensemble's adapters. One per model and name: an engine keeps its server and the weights it was given."""
    name = cfg.sampling.backend if cfg is not None else "hf"
    made = _BACKENDS.setdefault(policy.model, {})
    if (id(ensemble), name) not in made:
        made[id(ensemble), name] = BACKENDS.get(name).build(policy, ensemble, cfg)
    return made[id(ensemble), name]


def generate_file(cfg: Config, prompts: str, out: str, adapter: str | None, n: int, sample: bool) -> int:
    """``bpo generate``: ``n`` responses of the base model or ``adapter`` to each prompt of a file, one JSON line
    per prompt (its id, prompt and responses) to ``out``; greedy unless ``sample``. Returns the prompts' count."""
    from peft import PeftModel

    from bpo.data import load_prompts
    from bpo.errors import ConfigError
    from bpo.io import write_jsonl
    from bpo.model.policy import check_adapter, load_policy

    if adapter:
        check_adapter(adapter, cfg.model.name)
        if cfg.sampling.backend == "openai":
            raise ConfigError(
                "--adapter with sampling.backend=openai: the server samples its own model; serve the adapter there "
                "and name it in engine.model, without --adapter"
            )
    records = load_prompts(prompts, cfg.data.prompt_field, None, id_field="id", skip_bad=cfg.data.skip_bad_rows)
    if not records:
        raise ConfigError(f"--prompts {prompts}: no prompts in the file")
    policy = load_policy(cfg.model.name, cfg.device or None, cfg.model.dtype, cfg.model.chat_template)
    if adapter:
        policy.model = PeftModel.from_pretrained(policy.model, adapter).eval()
        if cfg.sampling.backend != "hf":  # an engine is given plain weights
            policy.model = policy.model.merge_and_unload()
    ids = [policy.encode_prompt(cfg.data.prompt_template.format(prompt=r.prompt)) for r in records]
    params = cfg.sampling if sample else replace(cfg.sampling, temperature=0.0)
    groups = make_backend(policy, None, cfg).generate(ids, n, params, None, keys=[r.id for r in records])
    write_jsonl(
        out, ({"id": r.id, "prompt": r.prompt, "responses": [c.text for c in g]} for r, g in zip(records, groups))
    )
    return len(records)
