"""Batched sampling of n responses per prompt under a named adapter.

Generation sits behind :class:`Backend` so a faster engine (vLLM, say) can replace the HF
``generate`` loop without touching the trainer. The HF backend can also return the sampling
model's own log-probs of each response: in BPO the behavior model is the reference, so these
are the reference log-probs and no extra forward pass is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from bpo.ensemble import Ensemble
from bpo.models import Policy


@dataclass
class SamplingParams:
    """Decoding settings; the paper samples at temperature 1.0, top-k 50, 128 new tokens."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    do_sample: bool = True
    batch_size: int = 64  # prompts per generate call (each expands to n sequences)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finished: bool  # ended with EOS rather than at max_new_tokens
    logp: float | None = None  # summed log-prob under the sampling model, when asked for
    token_logps: list[float] = field(default_factory=list, repr=False)


class Backend(Protocol):
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: str | None,
        return_logps: bool = False,
    ) -> list[list[Completion]]:
        """n completions for each prompt (token ids, already formatted), under ``adapter``."""
        ...


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


class HFBackend:
    """``model.generate`` in left-padded batches; the adapter is switched through the ensemble."""

    def __init__(self, policy: Policy, ensemble: Ensemble | None = None):
        self.policy = policy
        self.ensemble = ensemble

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        adapter: str | None,
        return_logps: bool = False,
    ) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for start in range(0, len(prompt_ids), params.batch_size):
            chunk = prompt_ids[start : start + params.batch_size]
            if self.ensemble is None:
                out += self._generate(self.policy.model, chunk, n, params, return_logps)
            else:
                with self.ensemble.active(adapter) as model:
                    out += self._generate(model, chunk, n, params, return_logps)
        return out

    @torch.no_grad()
    def _generate(self, model, chunk, n, params: SamplingParams, return_logps: bool) -> list[list[Completion]]:
        tok = self.policy.tokenizer
        width = max(len(p) for p in chunk)
        rows = [p for p in chunk for _ in range(n)]  # n copies of each prompt, side by side
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(rows):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            attn[i, width - len(p) :] = 1
        device = self.policy.device
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.do_sample,
            temperature=params.temperature if params.do_sample else None,
            top_k=params.top_k if params.do_sample else None,
            top_p=params.top_p if params.do_sample else None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        recorder = _RecordLogps() if return_logps else None
        sequences = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]) if recorder else None,
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
