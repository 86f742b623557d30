"""A reference rule from outside the package, registered the way a user's package would.

``every_k``: pi_ref is the policy itself, copied every k steps (``train.reference_args.k``), whatever the
phases: a TR-DPO hard update with its own period. Nothing under src/ names it; ``test_plugins.py`` trains
with it, kills the run and resumes it.
"""

from bpo.errors import ConfigError
from bpo.train.references import ReferenceRule, register_reference


class EveryK(ReferenceRule):
    adapter, owns, args, help = "everyk", ("everyk",), ("k",), "pi_ref = the policy, copied every k steps"

    def start(self, ens, t) -> None:
        ens.merge("everyk", t.merge)

    def after_step(self, ens, t, step: int) -> None:
        if (step + 1) % int(t.reference_args.get("k", 1)) == 0:
            ens.merge("everyk", t.merge)

    def check(self, t) -> None:
        k = t.reference_args.get("k", 1)
        if t.reference == "every_k" and not (k >= 1 and float(k).is_integer()):
            raise ConfigError(f"train.reference_args.k = {k!r}: must be a whole number >= 1")


register_reference("every_k", EveryK())
