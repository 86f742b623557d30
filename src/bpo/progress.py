"""Progress: rich bars on a terminal, plain lines in a log; from the main process only.

A redirected run (nohup, CI, a cluster job) would show nothing of a bar until it finished, so
when the console is not a terminal the same calls print lines instead: every step's line from
the trainer (:meth:`Lines.line`), and the other tasks' progress at most every ``interval``
seconds and when they finish. Both kinds take the same calls, so no caller asks which it has.
"""

from __future__ import annotations

import os
import time
import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LogConsole(Console):
    """rich's console, except that output going to a file or a pipe is never wrapped: a log line (a
    result with its interval) stays whole, however long. A terminal keeps rich's layout."""

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:  # noqa: A003 - rich's name
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


class Bars(Progress):
    """Rich bars for a terminal; the bars already show what :meth:`line` would print."""

    def line(self, text: str) -> None:
        pass


class Lines:
    """The subset of rich's ``Progress`` bpo uses, as lines for a log."""

    def __init__(self, console: Console, disable: bool = False, interval: float = 30.0):
        self.console, self.disable, self.interval = console, disable, interval
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def line(self, text: str) -> None:
        if not self.disable:
            self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        """``quiet=True``: a task whose progress the caller reports itself (the training steps)."""
        key = len(self.tasks)
        now, quiet = time.time(), fields.get("quiet", False)
        self.tasks[key] = dict(
            description=description,
            total=total,
            completed=completed,
            at_start=completed,  # what was done before (a resume): not counted in the rate
            started=now,
            said=now,
            quiet=quiet,
        )
        if not quiet and total:  # a long task says it has begun, not only, 30 s later, how far it is
            self.line(f"{description} {completed:.0f}/{total:.0f} (starting)")
        return key

    def update(self, task: int, advance: float = 0, description: str | None = None, **_) -> None:
        t = self.tasks[task]
        t["completed"] += advance
        t["description"] = description or t["description"]
        done = t["total"] is not None and t["completed"] >= t["total"]
        now = time.time()
        if not t["quiet"] and advance and (done or now - t["said"] >= self.interval):
            t["said"] = now
            total = f"/{t['total']:.0f}" if t["total"] is not None else ""
            spent = now - t["started"]
            left = ""
            if t["total"] and not done and t["completed"] > t["at_start"]:
                rate = spent / (t["completed"] - t["at_start"])
                left = f", eta {rate * (t['total'] - t['completed']) / 60:.1f} min"
            self.line(f"{t['description']} {t['completed']:.0f}{total} ({spent:.0f} s{left})")

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)


def trained_nothing(m: dict) -> bool:
    """A step whose means are over no pairs (nan): no update was made, which is not a divergence."""
    return m.get("pairs/kept", 1) == 0


def bar_text(m: dict) -> str:
    """The progress bar's description after a step."""
    if trained_nothing(m):
        return "training (no pairs: no update)"
    return f"training loss {m.get('loss', float('nan')):.3f}"


def step_line(m: dict, steps: int, eta: float) -> str:
    """One step for a log: where the run is, how training goes, what it has spent, when it ends."""
    if trained_nothing(m):
        how = "no pairs to train (identical, tied or unlabelled): no update"
    else:
        how = (
            f"loss {m.get('loss', float('nan')):.4f} margin {m.get('rewards/margins', float('nan')):.4f} "
            f"kl {m.get('kl/behavior', float('nan')):.4f}"
        )
    return (
        f"step {m['step']}/{steps} phase {m['phase']} {how} "
        f"annotations {m['annotations/used']:.0f} {m['time/step']:.1f} s/step eta {eta / 60:.1f} min"
    )


class StepClock:
    """When a run ends: its steps' update time and its phases' collection time (sampling and the
    annotator), measured apart, so the first step's ETA does not count a phase's sampling once per step."""

    def __init__(self) -> None:
        self.update = self.collect = 0.0
        self.steps = self.phases = 0

    def add(self, m: dict) -> None:
        collect = m.get("time/sample", 0.0) + m.get("time/annotate", 0.0)
        if collect > 0:  # a step that started a phase
            self.collect += collect
            self.phases += 1
        self.update += m["time/step"] - collect
        self.steps += 1

    def eta(self, steps_left: int, phases_left: int) -> float:
        per_phase = self.collect / self.phases if self.phases else 0.0
        return self.update / max(self.steps, 1) * steps_left + per_phase * phases_left


def progress_bar(console: Console | None = None, disable: bool = False) -> Bars | Lines:
    console = console or LogConsole(stderr=True)
    disable = disable or int(os.environ.get("RANK", "0")) != 0  # one set of bars, from the main process
    if not console.is_terminal:
        return Lines(console, disable)
    return Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def warning_lines(console: Console) -> None:
    """bpo's own warnings (dropped rows or prompts) as one ``warning:`` line on ``console``; others as Python
    prints them; transformers' deprecation notices (theirs, not the user's) not at all."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    show = warnings.showwarning

    def line(message, category, filename, lineno, file=None, line=None) -> None:
        if category is UserWarning and f"{os.sep}bpo{os.sep}" in str(filename):
            console.print(f"warning: {message}", soft_wrap=True, markup=False, highlight=False)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = line
