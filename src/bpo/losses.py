"""DAP losses (DPO, IPO, SLiC) and the response log-probs they are computed from.

With Delta = [log pi(y_w) - log pi(y_l)] - [log pi_ref(y_w) - log pi_ref(y_l)]:
  DPO  -(1-eps) log sigmoid(beta*Delta) - eps log sigmoid(-beta*Delta)
  IPO  (Delta - 1/(2 beta))^2, on log-probs averaged over response tokens
  SLiC max(0, 1 - beta*Delta)
DPO and SLiC use summed log-probs. Which reference (SFT, behavior, EMA) feeds these
functions is the trainer's business; the formulas do not care.
"""

from __future__ import annotations

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
