"""A loss from outside the package, registered the way a user's package would: robust DPO.

Chowdhury et al. 2024 (arXiv 2403.00409), TRL's ``loss_type="robust"``: DPO made unbiased under
preference labels flipped with probability eps,
  [(1 - eps) * -log sigmoid(beta * Delta) - eps * -log sigmoid(-beta * Delta)] / (1 - 2 eps).
At eps = 0 it is DPO. Nothing under src/ names it; ``test_plugins.py`` imports this module and trains with it.
"""

import torch.nn.functional as F

from bpo.train.losses import Loss, LossParam, register_loss


def robust_dpo(delta, beta: float, flip_rate: float = 0.0):
    return ((1 - flip_rate) * -F.logsigmoid(beta * delta) + flip_rate * F.logsigmoid(-beta * delta)) / (
        1 - 2 * flip_rate
    )


FLIP = LossParam("flip_rate", 0.0, 0.5, closed=False, default=0.0, help="probability a label is flipped")
register_loss("robust", Loss(robust_dpo, "robust DPO (arXiv 2403.00409), summed log-probs", params=(FLIP,)))
