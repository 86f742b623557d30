"""Where step metrics go besides metrics.jsonl: TensorBoard always, Weights & Biases when asked.

W&B is optional (``logging.wandb=true``, ``pip install wandb``); its run id is kept in the run
folder so a ``--resume`` continues the same W&B run, and its own ``WANDB_MODE=offline`` is honoured.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from bpo.errors import ConfigError
from bpo.io import write_text_atomic


def check_wandb(enabled: bool) -> None:
    """Refuse ``logging.wandb=true`` before anything loads when wandb is not installed."""
    if enabled:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("logging.wandb=true needs the wandb package: pip install wandb (or logging.wandb=false)")


def win_rates(result: dict) -> dict[str, float]:
    """The evaluation's headline figures, flat, for a tracker's summary."""
    out = {
        "eval/improvement": result["improvement"]["mean"],
        "eval/win_rate_vs_start": result["win_rate_vs_start"]["win_rate"],
    }
    if "win_rate_vs_reference" in result:
        out["eval/win_rate_vs_reference"] = result["win_rate_vs_reference"]["win_rate"]
    return out


class Trackers:
    """TensorBoard in ``RUN/tb`` and, with ``wandb``, a W&B run named after the run folder."""

    def __init__(self, out: Path, config: dict[str, Any], wandb: bool = False, project: str = "bpo"):
        self.tb = SummaryWriter(str(out / "tb"))
        self.wandb = None
        if wandb:
            import wandb as wb

            id_file = out / "wandb-id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            write_text_atomic(id_file, run_id)
            self.wandb = wb.init(project=project, name=out.name, id=run_id, resume="allow", dir=str(out), config=config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(v)}
        for key, value in numbers.items():
            self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def summary(self, values: dict[str, float]) -> None:
        """End-of-run figures (win rates): the W&B run's summary; TensorBoard has no place for them."""
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def close(self) -> None:
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
