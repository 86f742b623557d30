"""The label queue of a run labelled by people: the pairs waiting, and every label given, on disk.

``RUN/labels/`` holds, per phase, ``phase-P.jsonl`` (written once when the phase is sampled: a
header, then one line per pair with its samples, so a resume days later trains on exactly what
was shown) and one append-only ``labels.jsonl`` of label events, fsync'd before the labeller's
browser hears back: a reload, a killed server or a crashed machine loses nothing that was
acknowledged. The current state is a fold over the events, so nothing is ever rewritten:

- a label: ``choice`` is the preferred response's index in the *sampled* order (0 or 1) or None
  for a tie, ``left`` which response the page showed on the left (the order is random per pair);
- a skip: the labeller passes; the pair goes to others first, and back to them last;
- an undo: cancels that labeller's latest label or skip.

A pair is labelled once ``overlap`` different people labelled it; its verdict is their majority
(no majority: a tie, not trained on). With ``overlap`` >= 2 agreement (percent and Cohen's kappa)
is measured per pair of labellers.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from bpo.errors import BpoError
from bpo.io import append_lines, read_jsonl, write_text_atomic

LEASE_SECONDS = 300  # a pair shown to one labeller is not offered to another for this long


class LabelError(BpoError, ValueError):
    """A label that cannot be taken (unknown pair, labelled already, ...); the message says which."""


@dataclass
class Item:
    """One pair waiting for people, with what training needs to use it without sampling again."""

    id: str  # "P-INDEX": phase and position among the phase's prompts
    phase: int
    index: int
    prompt_id: str
    prompt: str
    responses: list[str]
    tokens: list[list[int]]
    behavior_logps: list[float | None]
    left: int  # the response shown on the left: random per pair, recorded
    identical: bool = False  # both samples the same: nothing to ask
    prelabel: dict[str, Any] | None = None  # a model annotator's verdict {choice, scores, rationale}
    review: bool = True  # people label it (False: the pre-label stands)


def item_id(phase: int, index: int) -> str:
    return f"{phase}-{index}"


def left_side(seed: int, prompt_id: str) -> int:
    """Which sampled response the page shows on the left: a coin keyed by the run seed and the prompt."""
    return random.Random(f"{seed}:{prompt_id}:left").randrange(2)


class LabelQueue:
    """The pairs of each human-labelled phase, written once per phase (``RUN/labels/phase-P.jsonl``)."""

    def __init__(self, out: str | Path):
        self.dir = Path(out) / "labels"

    def path(self, phase: int) -> Path:
        return self.dir / f"phase-{phase}.jsonl"

    def token(self) -> str:
        """The run's secret: the label page's URL carries it, every request must. Made once, mode 0600."""
        path = self.dir / "token"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_name("token.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(18))
            os.replace(path.with_name("token.tmp"), path)
        return path.read_text().strip()

    def phases(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("phase-*.jsonl"))

    def has(self, phase: int, fingerprint: str) -> bool:
        """Whether the phase is queued; a queue written under other settings is refused, not reused."""
        path = self.path(phase)
        if not path.exists():
            return False
        header = read_jsonl(path)[0]
        if header.get("fingerprint") != fingerprint:
            raise LabelError(
                f"{path} was sampled under other settings than this run's; its labels are not this run's: "
                "restore the settings, or use another output_dir"
            )
        return True

    def write(self, phase: int, items: list[Item], fingerprint: str) -> None:
        header = {"labels": 1, "phase": phase, "pairs": len(items), "fingerprint": fingerprint}
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path(phase), "".join(json.dumps(r) + "\n" for r in [header, *map(asdict, items)]))

    def items(self, phase: int | None = None) -> list[Item]:
        phases = self.phases() if phase is None else [phase]
        return [Item(**row) for p in phases for row in read_jsonl(self.path(p))[1:]]


@dataclass
class Label:
    """A label event as it lies in ``labels.jsonl``."""

    seq: int
    id: str
    labeller: str
    time: str
    choice: int | None = None  # the preferred response (sampled order); None: a tie
    left: int | None = None  # the response the labeller saw on the left
    skip: bool = False
    undo: int | None = None  # an undo event: the seq it cancels
    source: str = "page"  # page, import:<file>


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or any(c in name for c in "\n\r\t"):
        raise LabelError(f"labeller name {name!r}: give a name of 1-64 characters (e.g. ?labeller=ana)")
    return name


class LabelStore:
    """Label events of one run, safe for concurrent labellers in one process (one lock, one file)."""

    def __init__(self, out: str | Path, overlap: int = 1):
        self.queue = LabelQueue(out)
        self.path = self.queue.dir / "labels.jsonl"
        self.overlap = overlap
        self.lock = threading.Lock()
        self.leases: dict[str, tuple[str, float]] = {}  # pair id -> (labeller, since)
        self.refresh()

    def refresh(self) -> None:
        """Read the queue and the events again (a new phase was queued, or another tool wrote labels)."""
        with self.lock:
            self.items = {i.id: i for i in self.queue.items()}
            self.events = [Label(**row) for row in read_jsonl(self.path)]
            # phases the run has trained on (their pairs are in its ledger): a label given now is never used
            ledger = self.queue.dir.parent / "annotations.jsonl"
            self.closed = {row["phase"] for row in read_jsonl(ledger) if "phase" in row}

    # ------------------------------------------------------------------ state
    def standing(self) -> list[Label]:
        """The labels and skips not undone, in the order given."""
        undone = {e.undo for e in self.events if e.undo is not None}
        return [e for e in self.events if e.undo is None and e.seq not in undone]

    def current(self) -> dict[str, dict[str, Label]]:
        """pair id -> labeller -> that labeller's standing label or skip (a later one replaces a skip)."""
        state: dict[str, dict[str, Label]] = {}
        for e in self.standing():
            state.setdefault(e.id, {})[e.labeller] = e
        return state

    def given(self) -> dict[str, int]:
        """Labels (not skips) standing per labeller; one who only skipped counts 0."""
        counts: dict[str, int] = {}
        for by in self.current().values():
            for who, e in by.items():
                counts[who] = counts.get(who, 0) + (not e.skip)
        return counts

    def labels(self, pair: str, state: dict | None = None) -> list[Label]:
        """The standing labels (not skips) of a pair, in the order given."""
        got = (state if state is not None else self.current()).get(pair, {}).values()
        return sorted((e for e in got if not e.skip), key=lambda e: e.seq)

    def needs_people(self, item: Item) -> bool:
        return item.review and not item.identical

    def open(self, item: Item) -> bool:
        """People may still label it: it needs them and its phase has not been trained on (a quorum
        below 1 lets training go on without some pairs; their labels would never be used)."""
        return self.needs_people(item) and item.phase not in self.closed

    def done(self, item: Item, state: dict) -> bool:
        return not self.needs_people(item) or len(self.labels(item.id, state)) >= self.overlap

    def progress(self, phase: int) -> dict[str, int]:
        state = self.current()
        todo = [i for i in self.items.values() if i.phase == phase and self.needs_people(i)]
        return {"phase": phase, "pairs": len(todo), "labelled": sum(self.done(i, state) for i in todo)}

    # ------------------------------------------------------------------ changes
    def _append(self, **fields: Any) -> Label:
        event = Label(seq=len(self.events), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_lines(self.path, [json.dumps(asdict(event))])  # fsync'd before anyone is told
        self.events.append(event)
        return event

    def add(self, labeller: str, pair: str, choice: int | None, skip: bool = False, source: str = "page") -> Label:
        """Record a label (or a skip); refused when the pair is unknown, labelled by them, or complete."""
        labeller = _check_name(labeller)
        with self.lock:
            item = self.items.get(pair)
            if item is None or not self.open(item):
                raise LabelError(f"pair {pair!r} is not waiting for labels in {self.queue.dir}")
            if choice not in (0, 1, None):
                raise LabelError(f"pair {pair}: choice {choice!r} is not 0, 1 or None (a tie)")
            state = self.current()
            mine = state.get(pair, {}).get(labeller)
            if mine is not None and not mine.skip:
                raise LabelError(f"{labeller} labelled pair {pair} already (undo it first to change it)")
            if not skip and self.done(item, state):
                raise LabelError(f"pair {pair} has its {self.overlap} label(s) already")
            self.leases.pop(pair, None)
            return self._append(
                id=pair, labeller=labeller, choice=None if skip else choice, left=item.left, skip=skip, source=source
            )

    def undo(self, labeller: str) -> str | None:
        """Cancel the labeller's latest standing label or skip; returns its pair id (None: nothing to undo)."""
        labeller = _check_name(labeller)
        with self.lock:
            mine = [e for e in self.standing() if e.labeller == labeller]
            if not mine:
                return None
            last = mine[-1]
            self._append(id=last.id, labeller=labeller, undo=last.seq)
            return last.id

    def next_item(self, labeller: str, first: str | None = None) -> Item | None:
        """The pair to show: ``first`` if still open for them, else one they have not seen (not shown
        to anyone else in the last few minutes), else one they skipped. Leased to them for a while."""
        labeller = _check_name(labeller)
        with self.lock:
            state, now = self.current(), time.time()

            def open_for(i: Item) -> bool:
                mine = state.get(i.id, {}).get(labeller)
                return not self.done(i, state) and (mine is None or mine.skip)

            def leased_elsewhere(i: Item) -> bool:
                who, since = self.leases.get(i.id, (labeller, 0.0))
                return who != labeller and now - since < LEASE_SECONDS

            items = [i for i in self.items.values() if self.open(i) and open_for(i)]
            items.sort(key=lambda i: (i.phase, i.index))
            skipped = {i.id for i in items if state.get(i.id, {}).get(labeller) is not None}
            ranked = (
                [i for i in items if i.id == first]
                + [i for i in items if i.id not in skipped and not leased_elsewhere(i)]
                + [i for i in items if i.id in skipped and not leased_elsewhere(i)]
            )
            if not ranked:
                return None
            self.leases[ranked[0].id] = (labeller, now)
            return ranked[0]

    # ------------------------------------------------------------------ results
    def verdict(self, item: Item, state: dict) -> tuple[int | None, list[Label]]:
        """The people's verdict on a pair: the majority choice of its labels (no majority: a tie)."""
        got = self.labels(item.id, state)
        counts = Counter(e.choice for e in got).most_common()
        if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
            return None, got
        return counts[0][0], got

    def agreement(self, phase: int | None = None) -> list[dict[str, Any]]:
        """Per pair of raters (people, and the pre-labelling model when there is one): on the pairs both
        labelled, how many, percent agreement and Cohen's kappa (categories: response 0, response 1, tie)."""
        state = self.current()
        votes: dict[str, dict[str, Any]] = {}
        for item in self.items.values():
            if phase is not None and item.phase != phase:
                continue
            for e in self.labels(item.id, state):
                votes.setdefault(e.labeller, {})[item.id] = e.choice
            if item.prelabel is not None and item.review and not item.identical:
                votes.setdefault("model (pre-label)", {})[item.id] = item.prelabel["choice"]
        rows = []
        for a, b in combinations(sorted(votes), 2):
            both = sorted(votes[a].keys() & votes[b].keys())
            if both:
                x, y = [votes[a][k] for k in both], [votes[b][k] for k in both]
                rows.append({"raters": [a, b], "pairs": len(both), "agreement": percent(x, y), "kappa": kappa(x, y)})
        return rows


def percent(x: list, y: list) -> float:
    return sum(a == b for a, b in zip(x, y)) / len(x)


def kappa(x: list, y: list) -> float | None:
    """Cohen's kappa of two raters' labels; None when chance agreement is 1 (both always said one thing)."""
    n = len(x)
    po = percent(x, y)
    cx, cy = Counter(x), Counter(y)
    pe = sum(cx[c] * cy[c] for c in cx) / (n * n)
    return None if pe == 1 else (po - pe) / (1 - pe)
