"""Response log-probs: how prompt+response rows are batched, and their summed/mean log-probs.

Two layouts: :class:`TokenBatch` (each row a whole prompt+response, for SFT and checks) and
:class:`SharedPromptBatch` (each prompt run once, its KV cache repeated for its responses: a DPO
pair costs one prompt forward instead of two). Both apply the LM head only at the positions that
predict a response token, and both end in :func:`_row_logps`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel


def pad(rows: Sequence[Sequence[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width on ``side``, and the mask of real tokens."""
    ids = [torch.tensor(list(r), dtype=torch.long) for r in rows]
    padded = pad_sequence(ids, batch_first=True, padding_value=value, padding_side=side)
    mask = pad_sequence([torch.ones_like(x) for x in ids], batch_first=True, padding_value=0, padding_side=side)
    return padded, mask


@dataclass
class TokenBatch:
    """Prompt+response sequences; ``response_mask`` marks the tokens whose log-probs count."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def build_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    padding_side: str = "right",
) -> TokenBatch:
    """Concatenate prompt and response ids and pad them; the layout does not change the result."""
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    ids, attn = pad(rows, pad_token_id, padding_side)
    # the response mask is the row mask without the prompt's tokens (prompt = 0, response = 1)
    marks = [[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)]
    resp, _ = pad(marks, 0, padding_side)
    return TokenBatch(ids, attn, resp.bool())


@dataclass
class SharedPromptBatch:
    """Prompts (left-padded, run once) and ``repeats`` responses per prompt (right-padded)."""

    prompt_ids: torch.Tensor  # [n, P]
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # [n * repeats, R]; prompt i owns rows i*repeats .. i*repeats + repeats - 1
    response_mask: torch.Tensor
    repeats: int

    def to(self, device: torch.device) -> SharedPromptBatch:
        return SharedPromptBatch(
            self.prompt_ids.to(device),
            self.prompt_mask.to(device),
            self.response_ids.to(device),
            self.response_mask.to(device),
            self.repeats,
        )


def build_shared_batch(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]], pad_token_id: int
) -> SharedPromptBatch:
    repeats = len(responses[0])
    if any(len(r) != repeats for r in responses):
        raise ValueError("every prompt needs the same number of responses")
    p_ids, p_mask = pad(prompts, pad_token_id, "left")
    r_ids, r_mask = pad([r for rs in responses for r in rs], pad_token_id, "right")
    return SharedPromptBatch(p_ids, p_mask, r_ids, r_mask.bool(), repeats)


def _row_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean log-probs per row; ``logits`` are those of the ``mask``ed positions only."""
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[mask][:, None]).squeeze(-1)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
    summed = torch.zeros(mask.shape[0], device=mask.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return summed, summed / mask.sum(-1).clamp(min=1)


def _head(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on the hidden states that predict response tokens (hidden x vocab is the largest
    matmul for small models with big vocabularies, so it runs nowhere else)."""
    logits = model.get_output_embeddings()(hidden)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:  # Gemma's final-logit soft cap, as its own forward applies it
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def sequence_logps(
    model: PreTrainedModel, batch: TokenBatch, response_only_projection: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean log-probs of the response tokens of each row.

    Position ids come from the attention mask, so left- and right-padded batches give the same
    numbers. ``response_only_projection=False`` runs the full LM head (kept for benchmarks and as
    a check).
    """
    ids, attn, resp = batch.input_ids, batch.attention_mask, batch.response_mask
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    predict = resp[:, 1:]  # position t predicts token t+1
    if response_only_projection:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=position_ids).last_hidden_state
        logits = _head(model, hidden[:, :-1][predict])
    else:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits[:, :-1][predict]
    return _row_logps(logits, ids[:, 1:], predict)


def _prompt_pass(decoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> tuple:
    """The decoder on left-padded prompts, and ``{name: cache}`` with each row's cache repeated
    ``repeats`` times (transformers renamed ``past_key_values`` to ``cache``; the name is this version's)."""
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    cache = getattr(out, name)
    cache.batch_repeat_interleave(repeats)
    return out, {name: cache}


def prompt_cache(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> dict:
    """Keyword arguments that hand ``generate`` the prompts' KV cache, each row repeated ``repeats``
    times: sampling n responses runs each prompt once (position ids as generate derives them)."""
    return _prompt_pass(model.get_decoder(), ids, mask, repeats)[1]


def shared_prompt_logps(model: PreTrainedModel, batch: SharedPromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`sequence_logps` for several responses to one prompt, running the prompt once.

    The prompt's key/value cache (with its autograd graph) is repeated for each response, so a
    DPO pair costs one prompt forward instead of two; gradients flow back through the cache.
    """
    decoder = model.get_decoder()
    p_mask = batch.prompt_mask
    first, cache = _prompt_pass(decoder, batch.prompt_ids, p_mask, batch.repeats)
    r_mask = batch.response_mask
    p_mask_rep = p_mask.repeat_interleave(batch.repeats, dim=0)
    positions = p_mask_rep.sum(-1, keepdim=True) + torch.arange(r_mask.shape[1], device=r_mask.device)
    second = decoder(
        input_ids=batch.response_ids,
        attention_mask=torch.cat([p_mask_rep, r_mask.long()], dim=-1),
        position_ids=positions,
        use_cache=True,
        **cache,
    )
    # response token j is predicted by the hidden state before it: the prompt's last for j = 0
    last_prompt = first.last_hidden_state[:, -1:].repeat_interleave(batch.repeats, dim=0)
    hidden = torch.cat([last_prompt, second.last_hidden_state[:, :-1]], dim=1)
    return _row_logps(_head(model, hidden[r_mask]), batch.response_ids, r_mask)
