"""DAP losses (DPO, IPO, SLiC) and the response log-probs they are computed from.

With Delta = [log pi(y_w) - log pi(y_l)] - [log pi_ref(y_w) - log pi_ref(y_l)]:
  DPO  -(1-eps) log sigmoid(beta*Delta) - eps log sigmoid(-beta*Delta)
  IPO  (Delta - 1/(2 beta))^2, on log-probs averaged over response tokens
  SLiC max(0, 1 - beta*Delta)
DPO and SLiC use summed log-probs. Which reference (SFT, behavior, EMA) feeds these
functions is the trainer's business; the formulas do not care.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

LossType = Literal["dpo", "ipo", "slic"]


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
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
        start = width - len(row) if padding_side == "left" else 0
        ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        attn[i, start : start + len(row)] = 1
        resp[i, start + len(p) : start + len(row)] = True
    return TokenBatch(ids, attn, resp)


def sequence_logps(
    model: PreTrainedModel, batch: TokenBatch, response_only_projection: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean log-probs of the response tokens of each row.

    The LM head (hidden x vocab, the largest matmul for small models with big vocabularies) is
    applied only at positions that predict a response token, unless
    ``response_only_projection`` is off (kept for benchmarks and as a check). Position ids come
    from the attention mask, so left- and right-padded batches give the same numbers.
    """
    ids, attn, resp = batch.input_ids, batch.attention_mask, batch.response_mask
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    # position t predicts token t+1
    predict = resp[:, 1:]
    targets = ids[:, 1:][predict]
    if response_only_projection:
        decoder = model.get_decoder()
        hidden = decoder(input_ids=ids, attention_mask=attn, position_ids=position_ids).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][predict])
        softcap = getattr(model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    else:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits[:, :-1][predict]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    row = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(predict)[predict]
    summed = torch.zeros(ids.shape[0], device=ids.device, dtype=token_logps.dtype).index_add(0, row, token_logps)
    counts = predict.sum(-1).clamp(min=1)
    return summed, summed / counts


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
    p_width = max(len(p) for p in prompts)
    flat = [list(r) for rs in responses for r in rs]
    r_width = max(len(r) for r in flat)
    p_ids = torch.full((len(prompts), p_width), pad_token_id, dtype=torch.long)
    p_mask = torch.zeros_like(p_ids)
    for i, p in enumerate(prompts):
        p_ids[i, p_width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        p_mask[i, p_width - len(p) :] = 1
    r_ids = torch.full((len(flat), r_width), pad_token_id, dtype=torch.long)
    r_mask = torch.zeros((len(flat), r_width), dtype=torch.bool)
    for i, r in enumerate(flat):
        r_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        r_mask[i, : len(r)] = True
    return SharedPromptBatch(p_ids, p_mask, r_ids, r_mask, repeats)


def shared_prompt_logps(model: PreTrainedModel, batch: SharedPromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`sequence_logps` for several responses to one prompt, running the prompt once.

    The prompt's key/value cache (with its autograd graph) is repeated for each response, so a
    DPO pair costs one prompt forward instead of two; gradients flow back through the cache.
    """
    decoder = model.get_decoder()
    p_mask = batch.prompt_mask
    first = decoder(
        input_ids=batch.prompt_ids,
        attention_mask=p_mask,
        position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
    )
    # transformers renamed past_key_values to cache; use whichever this version has
    new_name = "cache" in inspect.signature(decoder.forward).parameters
    cache = first.cache if new_name else first.past_key_values
    cache.batch_repeat_interleave(batch.repeats)
    cache_arg = "cache" if new_name else "past_key_values"
    r_mask = batch.response_mask
    p_mask_rep = p_mask.repeat_interleave(batch.repeats, dim=0)
    positions = p_mask_rep.sum(-1, keepdim=True) + torch.arange(r_mask.shape[1], device=r_mask.device)
    second = decoder(
        input_ids=batch.response_ids,
        attention_mask=torch.cat([p_mask_rep, r_mask.long()], dim=-1),
        position_ids=positions,
        use_cache=True,
        **{cache_arg: cache},
    )
    # response token j is predicted by the hidden state before it: the prompt's last for j = 0
    last_prompt = first.last_hidden_state[:, -1:].repeat_interleave(batch.repeats, dim=0)
    hidden = torch.cat([last_prompt, second.last_hidden_state[:, :-1]], dim=1)
    logits = model.get_output_embeddings()(hidden[r_mask])
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch.response_ids[r_mask][:, None]).squeeze(-1)
    rows = torch.arange(r_mask.shape[0], device=r_mask.device)[:, None].expand_as(r_mask)[r_mask]
    summed = torch.zeros(r_mask.shape[0], device=r_mask.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return summed, summed / r_mask.sum(-1).clamp(min=1)


def dap_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    loss_type: LossType = "dpo",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses and TRL-named metrics (means over the batch, detached).

    Inputs are log-probs of the kind the loss needs: summed for DPO and SLiC, averaged
    over response tokens for IPO. Rewards are beta * (log pi - log pi_ref), as in TRL.
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "dpo":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "slic":
        losses = torch.relu(1 - beta * delta)
    else:
        raise ValueError(f"unknown loss {loss_type!r}: use dpo, ipo or slic")
    chosen_rewards = beta * chosen_ratio.detach()
    rejected_rewards = beta * rejected_ratio.detach()
    metrics = {
        "loss": losses.detach().mean(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
    return losses, metrics
