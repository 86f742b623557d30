"""Reference rules: where pi_ref sits and how it moves, one declared part each (``train.reference=NAME``).

A rule names the frozen adapter the loss reads as pi_ref and says what happens to it at the run's
start, at each behavior refresh (a phase start, right after pi_beta <- pi_theta) and after each
step; the adapters it owns are checkpointed beside the members, so a resume continues it exactly.
The loop calls these hooks and never asks which rule it has.

  behavior  BPO: pi_ref = pi_beta, the model that sampled the phase's pairs (arXiv 2406.12168)
  sft       online DAP: pi_ref = the SFT model
  ema       pi_ref = an EMA of pi_beta (the BPO paper's code, an ablation), rate train.ema_alpha
  tr        TR-DPO (arXiv 2404.09656): starts at SFT; every tau steps pi_ref <- alpha pi_theta + (1 - alpha) pi_ref
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpo.config import need
from bpo.errors import ConfigError
from bpo.registry import REFERENCES

if TYPE_CHECKING:  # the rules load with the config (its checks read them): no model library, no cycle
    from bpo.config import TrainConfig
    from bpo.model.ensemble import Ensemble

BEHAVIOR, SFT = "behavior", "sft"  # the frozen adapters every run has: the phase's pi_beta and the start model
POLICY = "current"  # the members' merge now (pi_theta), rebuilt where a rule needs it; never checkpointed


class ReferenceRule:
    """What ``train.reference=NAME`` is. Override the hooks a rule needs; each gets the ensemble and train config."""

    adapter: str = BEHAVIOR  # the frozen adapter the loss reads as pi_ref
    owns: tuple[str, ...] = ()  # adapters of its own state: checkpointed and restored beside the members
    args: tuple[str, ...] = ()  # its keys in train.reference_args (a plugin's own hyper-parameters)
    help: str = ""

    def start(self, ens: Ensemble, t: TrainConfig) -> None:
        """At the run's start (and before a resume restores ``owns``): ``behavior`` and ``sft`` exist."""

    def refresh(self, ens: Ensemble, t: TrainConfig) -> None:
        """At a phase start, right after ``behavior`` became the members' merge."""

    def after_step(self, ens: Ensemble, t: TrainConfig, step: int) -> None:
        """After the update of step ``step`` (0-based), before metrics and checkpoints."""

    def check(self, t: TrainConfig) -> None:
        """Refuse its settings before anything loads; called for every rule, whichever is chosen."""

    def label(self, t: dict[str, Any]) -> str:
        """How reports name it, from a run's saved train config."""
        return self.help

    def check_args(self, t: TrainConfig) -> None:
        """Refuse ``train.reference_args`` this rule (the chosen one) does not take."""
        unknown = set(t.reference_args) - set(self.args)
        if unknown:
            raise ConfigError(f"train.reference_args: {sorted(unknown)} not taken by train.reference={t.reference} "
                              f"({', '.join(self.args) or 'none'})")  # fmt: skip


def register_reference(name: str, rule: ReferenceRule) -> ReferenceRule:
    """Make ``train.reference=name`` mean ``rule`` (from a user's package too: the ``bpo.plugins`` entry points)."""
    return REFERENCES.register(name, rule)


class Behavior(ReferenceRule):
    adapter, help = BEHAVIOR, "BPO"


class Sft(ReferenceRule):
    adapter, help = SFT, "online DAP, SFT reference"


class Ema(ReferenceRule):
    adapter, owns, help = "ema", ("ema",), "EMA reference"

    def start(self, ens: Ensemble, t: TrainConfig) -> None:
        ens.snapshot(BEHAVIOR, "ema")

    def refresh(self, ens: Ensemble, t: TrainConfig) -> None:
        if t.ema_update == "refresh":  # the paper's code: the EMA moves at refreshes only
            ens.ema_update(BEHAVIOR, "ema", t.ema_alpha)

    def after_step(self, ens: Ensemble, t: TrainConfig, step: int) -> None:
        if t.ema_update == "step":  # an EMA of the policy (not the paper's)
            ens.merge(POLICY, t.merge)
            ens.ema_update(POLICY, "ema", t.ema_alpha)

    def check(self, t: TrainConfig) -> None:
        need(0 < t.ema_alpha <= 1, "train.ema_alpha", "in (0, 1]", t.ema_alpha)


class TrustRegion(ReferenceRule):
    """TR-DPO. alpha = 1 (hard): an exact copy of the members' merge (rank K*r); below 1 (soft): on delta-W, a
    dense adapter (``Ensemble.mix``). Its start is the first update with alpha 1: pi_ref = the start model."""

    adapter, owns = "tr", ("tr",)
    help = "TR-DPO (arXiv 2404.09656): every tau steps pi_ref <- alpha pi_theta + (1 - alpha) pi_ref"

    def start(self, ens: Ensemble, t: TrainConfig) -> None:
        self.update(ens, t, 1.0)

    def after_step(self, ens: Ensemble, t: TrainConfig, step: int) -> None:
        if (step + 1) % t.ref_model_sync_steps == 0:  # every tau steps, whatever F
            self.update(ens, t, t.ref_model_mixup_alpha)

    @staticmethod
    def update(ens: Ensemble, t: TrainConfig, alpha: float) -> None:
        """pi_ref <- alpha pi_theta + (1 - alpha) pi_ref: the one place TR-DPO's reference moves."""
        if t.ref_model_mixup_alpha == 1:
            ens.merge("tr", t.merge)
        else:
            ens.merge(POLICY, t.merge)
            ens.mix(POLICY, "tr", alpha)

    def check(self, t: TrainConfig) -> None:
        need(0 < t.ref_model_mixup_alpha <= 1, "train.ref_model_mixup_alpha", "in (0, 1]", t.ref_model_mixup_alpha)
        need(t.ref_model_sync_steps >= 1, "train.ref_model_sync_steps", "at least 1", t.ref_model_sync_steps)

    def label(self, t: dict[str, Any]) -> str:
        return f"TR-DPO reference (alpha {t.get('ref_model_mixup_alpha')}, tau {t.get('ref_model_sync_steps')})"


register_reference("behavior", Behavior())
register_reference("sft", Sft())
register_reference("ema", Ema())
register_reference("tr", TrustRegion())
