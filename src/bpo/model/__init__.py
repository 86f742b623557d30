"""The policy: loading and prompt format, the LoRA ensemble and its merge, log-probs, generation backends."""

from bpo.registry import BACKENDS


def _hf(policy, ensemble):
    from bpo.model.sampling import HFBackend  # torch and transformers load with the model, not with a config

    return HFBackend(policy, ensemble)


BACKENDS.register("hf", _hf)  # ``sampling.backend=hf``: transformers' generate (bpo.model.sampling)
