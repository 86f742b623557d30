"""Wall time per part of the loop (sampling, annotation, reference, update), for metrics and benchmarks.

Online preference training spends its time in a few places whose balance decides what to
optimise; each step's metrics carry the seconds spent in each (``time/<part>``), so a run's own
log says where its time went.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class Timer:
    """Seconds accumulated per named part until :meth:`pop` hands them out and starts again."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
        sync()  # CUDA runs ahead of Python; without the syncs the time would land in the next part
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = {f"time/{k}": round(v, 3) for k, v in self.seconds.items()}, {}
        return out
