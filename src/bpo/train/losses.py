"""DAP losses (DPO, IPO, SLiC, SimPO), one declared part each, and the TRL-named metrics of a batch.

With Delta = [log pi(y_w) - log pi(y_l)] - [log pi_ref(y_w) - log pi_ref(y_l)]:
  DPO   -(1-eps) log sigmoid(beta*Delta) - eps log sigmoid(-beta*Delta)
  IPO   (Delta - 1/(2 beta))^2, on log-probs averaged over response tokens
  SLiC  max(0, 1 - beta*Delta)
  SimPO -log sigmoid(beta*Delta - gamma), on averaged log-probs and without a reference (log pi_ref = 0)
DPO and SLiC use summed log-probs (:mod:`bpo.model.logprobs` computes both kinds). Which reference
(SFT, behavior, EMA, TR-DPO's) feeds these functions is the trainer's business; the formulas do not care.

A loss is a :class:`Loss` registered under its ``train.loss`` name (:func:`register_loss`): its
function of Delta, whether it reads averaged log-probs and a reference, and its own hyper-parameters,
each a ``train.*`` key (the built-ins', TRL's names) or an entry of ``train.loss_args`` (a plugin's).
The config, its checks, ``bpo config kinds`` and the step read that declaration, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from bpo.errors import ConfigError
from bpo.registry import LOSSES

if TYPE_CHECKING:
    import torch

# The declarations load with the config (its checks read them) and so need no torch: each formula imports
# torch.nn.functional where it runs.


@dataclass(frozen=True)
class LossParam:
    """One hyper-parameter of a loss: the keyword its function takes, a default and the values it allows."""

    name: str
    low: float = -math.inf  # allowed: low <= value < high (or <= high when closed)
    high: float = math.inf
    closed: bool = True
    default: float = 0.0  # a plugin's, in train.loss_args; a built-in's default and help are its train.* field's
    help: str = ""

    def check(self, value: Any, key: str) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and self.low <= value and (value <= self.high if self.closed else value < self.high)
        if not ok:
            upper = "]" if self.closed else ")"
            raise ConfigError(f"{key} = {value!r}: must be a finite number in [{self.low}, {self.high}{upper}")
        return float(value)


@dataclass(frozen=True)
class Loss:
    """What ``train.loss=NAME`` is. ``fn(delta, beta, **params)`` gives the per-example losses."""

    fn: Callable[..., torch.Tensor]
    help: str
    mean_logps: bool = False  # log-probs averaged over response tokens (IPO, SimPO); else summed
    reference: bool = True  # reads pi_ref; False: log pi_ref = 0 and train.reference is unused (SimPO)
    params: tuple[LossParam, ...] = ()

    def keys(self, train: Any) -> list[str]:
        """The config key of each hyper-parameter: ``train.NAME`` for a built-in's, ``train.loss_args.NAME``."""
        own = {f.name for f in fields(train)}
        return [f"train.{p.name}" if p.name in own else f"train.loss_args.{p.name}" for p in self.params]

    def check(self, train: Any, chosen: bool) -> None:
        """Refuse a bad hyper-parameter when the config is read: its ``train.*`` ones whichever loss is chosen (a bad
        value there is a typo all the same), and ``train.loss_args`` when it is the chosen loss."""
        for p, key in zip(self.params, self.keys(train)):
            if key == f"train.{p.name}":
                p.check(getattr(train, p.name), key)
        if chosen:
            self.values(train)

    def values(self, train: Any) -> dict[str, float]:
        """This loss's hyper-parameters from the train config, checked: a ``train.*`` field where the config has
        one (the built-ins), else ``train.loss_args``, else the default."""
        out = {}
        for p, key in zip(self.params, self.keys(train)):
            value = getattr(train, p.name) if key == f"train.{p.name}" else train.loss_args.get(p.name, p.default)
            out[p.name] = p.check(value, key)
        args = [k.removeprefix("train.loss_args.") for k in self.keys(train) if k.startswith("train.loss_args.")]
        unknown = set(train.loss_args) - set(args)
        if unknown:
            takes = ", ".join(args) or "none"
            raise ConfigError(f"train.loss_args: {sorted(unknown)} not taken by train.loss={train.loss} ({takes})")
        return out


def register_loss(name: str, loss: Loss) -> Loss:
    """Make ``train.loss=name`` mean ``loss`` (from a user's package too: the ``bpo.plugins`` entry points)."""
    return LOSSES.register(name, loss)


def dpo_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290), with conservative label smoothing eps:
    -(1 - eps) log sigmoid(beta * Delta) - eps log sigmoid(-beta * Delta)."""
    import torch.nn.functional as F

    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def ipo_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036): (Delta - 1 / (2 beta))^2, on mean log-probs."""
    return (delta - 1 / (2 * beta)) ** 2


def slic_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC-HF (Zhao et al. 2023, arXiv 2305.10425), the hinge form: max(0, 1 - beta * Delta)."""
    return (1 - beta * delta).relu()


def simpo_loss(delta: torch.Tensor, beta: float, simpo_gamma: float = 0.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024, arXiv 2405.14734): -log sigmoid(beta * Delta - gamma), with Delta the
    difference of length-normalised (averaged) log-probs and no reference; gamma is the target margin
    (TRL's ``simpo_gamma``). The paper's beta is 2.0-2.5, gamma/beta 0.3-0.8."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * delta - simpo_gamma)


SMOOTHING = LossParam("label_smoothing", 0.0, 0.5, closed=False)  # train.label_smoothing, TRL's name
GAMMA = LossParam("simpo_gamma", 0.0)  # train.simpo_gamma, TRL's name
register_loss("dpo", Loss(dpo_loss, "DPO (arXiv 2305.18290), summed log-probs", params=(SMOOTHING,)))
register_loss("ipo", Loss(ipo_loss, "IPO (arXiv 2310.12036), averaged log-probs", mean_logps=True))
register_loss("slic", Loss(slic_loss, "SLiC-HF hinge (arXiv 2305.10425), summed log-probs"))
register_loss(
    "simpo",
    Loss(simpo_loss, "SimPO (arXiv 2405.14734), averaged log-probs", True, False, (GAMMA,)),
)


def dap_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    loss_type: str = "dpo",
    beta: float = 0.1,
    **params: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses and TRL-named metrics (means over the batch, detached).

    Inputs are log-probs of the kind the loss needs: summed for DPO and SLiC, averaged
    over response tokens for IPO and SimPO (whose reference inputs must be zeros). ``params`` are the
    loss's own hyper-parameters (``Loss.values``). Rewards are beta * (log pi - log pi_ref), as in TRL.
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    losses = LOSSES.get(loss_type).fn(chosen_ratio - rejected_ratio, beta, **params)
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
