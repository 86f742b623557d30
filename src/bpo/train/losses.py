"""DAP losses (DPO, IPO, SLiC, SimPO), one function each, and the TRL-named metrics of a batch.

With Delta = [log pi(y_w) - log pi(y_l)] - [log pi_ref(y_w) - log pi_ref(y_l)]:
  DPO   -(1-eps) log sigmoid(beta*Delta) - eps log sigmoid(-beta*Delta)
  IPO   (Delta - 1/(2 beta))^2, on log-probs averaged over response tokens
  SLiC  max(0, 1 - beta*Delta)
  SimPO -log sigmoid(beta*Delta - gamma), on averaged log-probs and without a reference (log pi_ref = 0)
DPO and SLiC use summed log-probs (:mod:`bpo.model.logprobs` computes both kinds). Which reference
(SFT, behavior, EMA, TR-DPO's) feeds these functions is the trainer's business; the formulas do not care.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["dpo", "ipo", "slic", "simpo"]
MEAN_LOGPS = ("ipo", "simpo")  # losses on log-probs averaged over response tokens; the others sum them
REFERENCE_FREE = ("simpo",)  # losses that read no reference model


def dpo_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290), with conservative label smoothing eps:
    -(1 - eps) log sigmoid(beta * Delta) - eps log sigmoid(-beta * Delta)."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def ipo_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036): (Delta - 1 / (2 beta))^2, on mean log-probs."""
    return (delta - 1 / (2 * beta)) ** 2


def slic_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """SLiC-HF (Zhao et al. 2023, arXiv 2305.10425), the hinge form: max(0, 1 - beta * Delta)."""
    return torch.relu(1 - beta * delta)


def simpo_loss(delta: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024, arXiv 2405.14734): -log sigmoid(beta * Delta - gamma), with Delta the
    difference of length-normalised (averaged) log-probs and no reference; gamma is the target margin
    (TRL's ``simpo_gamma``). The paper's beta is 2.0-2.5, gamma/beta 0.3-0.8."""
    return -F.logsigmoid(beta * delta - gamma)


LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss, "slic": slic_loss, "simpo": simpo_loss}


def dap_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    loss_type: LossType = "dpo",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses and TRL-named metrics (means over the batch, detached).

    Inputs are log-probs of the kind the loss needs: summed for DPO and SLiC, averaged
    over response tokens for IPO and SimPO (whose reference inputs must be zeros). Rewards are
    beta * (log pi - log pi_ref), as in TRL.
    """
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss {loss_type!r}: use {', '.join(LOSSES)}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    extra = simpo_gamma if loss_type == "simpo" else label_smoothing
    losses = LOSSES[loss_type](chosen_ratio - rejected_ratio, beta, extra)
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
