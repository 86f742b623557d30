"""The annotation ledger: every sampled pair and its judgement, on disk before training uses it.

Annotations are what a run pays for, so the ledger is the budget's account and the only copy of
what was bought. It is an append-only JSONL file: a header line saying what produced it (the
settings that determine which pairs are sampled and how they are judged), then one line per pair,
fsync'd per batch. A resumed run reads it instead of asking again. Identical pairs (never sent to
the annotator) are recorded too, so a resume neither samples them again nor miscounts them.

What the ledger refuses, rather than training on it silently: a header from other settings (a new
run in an old folder, another annotator or seed), two lines for one pair, a gap inside a phase
(a deleted line), and, checked against the checkpoint, lines changed or lost since it was saved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bpo.config import Config
from bpo.errors import BpoError
from bpo.io import append_lines, complete_lines, write_text_atomic
from bpo.registry import ANNOTATOR_KINDS

FORMAT = 1


class LedgerError(BpoError, ValueError):
    """The ledger does not belong to this run or was damaged; the message says what and how to fix."""


@dataclass
class Annotation:
    """One logged pair. ``tokens``/``behavior_logps`` let a resumed run train without re-sampling."""

    phase: int
    index: int  # position among the phase's prompts (this process's shard)
    prompt_id: str
    responses: list[str]
    tokens: list[list[int]]
    choice: int | None  # preferred response; None: a tie, or an identical pair
    scores: list[float] | None = None
    rationale: str | None = None
    behavior_logps: list[float | None] | None = field(default=None, repr=False)  # summed, under the sampler
    identical: bool = False  # both responses the same tokens: not annotated, not trained on
    usage: dict[str, int] | None = None  # what this judgement cost: requests and tokens (an LLM judge)
    rejected: int | None = None  # best-of-n: the response trained against (None: the other of two)
    calls: int = 1  # what the annotator was asked: one per response scored, per pairwise question, per label
    labels: list[dict] | None = None  # annotator.kind=human: each person's label {labeller, choice, left, time}
    unjudged: str | None = None  # why choice is None (not identical): tie, invalid (unreadable answer), unlabelled

    def trained_pair(self) -> tuple[int, int]:
        """(chosen, rejected) indices into ``responses``; only for a judged pair (``choice`` not None)."""
        assert self.choice is not None
        return self.choice, (1 - self.choice if self.rejected is None else self.rejected)


# train settings that change neither the pairs nor the updates: a ledger made with other values is still this run's
NOT_LEDGER_TRAIN = ("save_every", "save_phase_ends", "log_kl_sft", "micro_batch")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class AnnotationLog:
    """Append-only JSONL ledger. A line cut by a kill is dropped on open (it was never used).

    ``settings`` (when given) must match the header of an existing ledger; a new ledger gets them
    as its header, and so does a new run over a ledger with no judgement (a run that failed before
    its first: nothing was paid for). A ``--resume`` (``resume``) never replaces a header.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None, resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.header, self.entries = self._read()
        self._check_keys()
        if settings is not None:
            self.bind(settings, resume)

    def bind(self, settings: dict[str, Any], resume: bool = False) -> None:
        """Check ``settings`` against the header, or write them as the header of a new ledger."""
        settings = json.loads(json.dumps(settings, default=str))  # as it reads back from disk
        if self.header is None:
            if self.entries:
                raise LedgerError(
                    f"{self.path} holds {len(self.entries)} judgements but no header saying what produced them; "
                    "no run can trust them: use another output_dir"
                )
            self._write_header(settings)  # an empty file, or only a torn line
        elif self.header["settings"] != settings and not self.entries and not resume:
            self._write_header(settings)  # a new run after one that failed before its first judgement: none paid
        elif self.header["settings"] != settings:
            old, new = _flat(self.header["settings"]), _flat(settings)
            keys = sorted(old.keys() | new.keys())
            diffs = [f"{k}: {old.get(k)!r} in the ledger, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
            raise LedgerError(
                f"{self.path} was written by other settings ({'; '.join(diffs[:4])}"
                f"{'; ...' if len(diffs) > 4 else ''}): its {len(self.entries)} judgements are not this run's. "
                "Use another output_dir, or restore those settings to reuse them"
            )

    def _write_header(self, settings: dict[str, Any]) -> None:
        self.header = {"ledger": FORMAT, "fingerprint": fingerprint(settings), "settings": settings}
        write_text_atomic(self.path, json.dumps(self.header) + "\n")

    def _read(self) -> tuple[dict[str, Any] | None, list[Annotation]]:
        if not self.path.exists():
            return None, []
        data = self.path.read_bytes()
        lines = complete_lines(data)
        header, entries, offset = None, [], 0
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                if number == 1 and "ledger" in row:
                    header = row
                else:
                    entries.append(Annotation(**row))
            except (json.JSONDecodeError, TypeError) as err:
                raise LedgerError(
                    f"{self.path}:{number}: damaged line ({err}); the ledger cannot be trusted: restore it from a "
                    "backup or start the run in another output_dir"
                ) from None
            offset += len(line)
        if offset != len(data):  # a partial last line: the kill came mid-write, before training used it
            with open(self.path, "r+b") as f:
                f.truncate(offset)
        return header, entries

    def _check_keys(self) -> None:
        """One line per pair, and each phase's pairs a contiguous run 0..n-1 (collection goes in order)."""
        seen: dict[int, list[int]] = {}
        for e in self.entries:
            seen.setdefault(e.phase, []).append(e.index)
        for phase, indices in seen.items():
            if len(set(indices)) != len(indices):
                dup = next(i for i in indices if indices.count(i) > 1)
                raise LedgerError(
                    f"{self.path}: pair {dup} of phase {phase} appears twice; a duplicated line would be trained on "
                    "twice: remove the copy (or restore the ledger from a backup)"
                )
            if sorted(indices) != list(range(len(indices))):
                gap = next(i for i in range(len(indices)) if i not in set(indices))
                raise LedgerError(
                    f"{self.path}: pair {gap} of phase {phase} is missing while later pairs are there (a deleted "
                    "line?); restore the ledger from a backup"
                )

    def append(self, entries: Sequence[Annotation]) -> None:
        append_lines(self.path, [json.dumps(asdict(e)) for e in entries])
        self.entries += entries

    def phase(self, phase: int) -> dict[int, Annotation]:
        return {e.index: e for e in self.entries if e.phase == phase}

    @property
    def calls(self) -> int:
        """Annotator calls paid for: the budget actually spent (best-of-n scores every response)."""
        return sum(e.calls for e in self.entries if not e.identical)

    @property
    def judged(self) -> int:
        """Pairs sent to the annotator (the budget spent); identical pairs are not."""
        return sum(not e.identical for e in self.entries)

    @property
    def identical_pairs(self) -> int:
        return sum(e.identical for e in self.entries)

    def outcomes(self, entries: Sequence[Annotation] | None = None) -> dict[str, int]:
        """Pairs trained on, and those not: identical, ties, invalid answers, unlabelled (counted apart)."""
        return outcome_counts(self.entries if entries is None else entries)


def outcome_counts(entries: Sequence[Annotation]) -> dict[str, int]:
    out = {"judged": 0, "identical": 0, "tie": 0, "invalid": 0, "unlabelled": 0}
    for e in entries:
        key = "identical" if e.identical else "judged" if e.choice is not None else e.unjudged or "tie"
        out[key] += 1
    return out


def ledger_settings(cfg: Config, processes: int) -> dict[str, Any]:
    """What decides which pairs a run samples and how they are judged: the ledger's header.

    Everything that changes a sample or a judgement is here (model, SFT, data order, sampling,
    annotator, the training that moves the behavior model, the process layout); what only says
    where things go or how often to save is not.
    """
    d = cfg.to_dict()
    return {
        "model": d["model"],
        "lora": d["lora"],
        "sft": d["sft"],
        "data": {k: v for k, v in d["data"].items() if k not in ("eval", "eval_examples")},
        "sampling": _sampling_settings(d["sampling"]),
        "annotator": _annotator_settings(d),
        # micro_batch splits the same update (gradients accumulate): a memory knob, like the checkpoint times;
        # a plugin's empty argument mappings are implied, so ledgers written before they existed still resume
        "train": {k: v for k, v in d["train"].items() if k not in NOT_LEDGER_TRAIN and v != {}},
        "device": d["device"],
        "processes": processes,
    }


def _sampling_settings(s: dict[str, Any]) -> dict[str, Any]:
    """Sampling keys that change samples (keyed noise: not the batch size, nor the speed-ups that give the
    same tokens); best-of-n keys only when used."""
    skip = {"batch_size", "fold_adapter", "prefill_once"} | ({"n", "pairs"} if s["n"] == 2 else set())
    if s["backend"] == "hf":  # the default is implied, as n and pairs are with n = 2
        skip.add("backend")
    # training always samples: sampling.do_sample said so until it went, and ledgers written then still resume
    return {**{k: v for k, v in s.items() if k not in skip}, "do_sample": True}


# The LLM judge's keys are kept in the ledger under the names they had before they became the judge section, so
# ledgers written then still resume.
OLD_NAMES = {
    "judge.model": "model",
    "judge.url": "url",
    "judge.template": "judge_template",
    "judge.temperature": "judge_temperature",
    "judge.max_tokens": "judge_max_tokens",
}


def _annotator_settings(d: dict[str, Any]) -> dict[str, Any]:
    """The annotator settings that change a judgement: the keys of the kind (and pre-labeller) in use, each
    kind's ``ledger_keys`` (an LLM judge's URL, model, template and sampling, not its cache or key; a reward
    model's input length; people's overlap and review), not the quorum of a human-labelled run (lowering it on a
    resume lets slow rounds go on)."""
    a = d["annotator"]
    own = {name: ANNOTATOR_KINDS.get(name).ledger_keys for name in ANNOTATOR_KINDS.names()}
    in_use = [kind for kind in (a["kind"], a.get("prelabel")) if kind]
    skip = {"quorum"} | {k for keys in own.values() for k in keys}
    keep = {k for kind in in_use for k in own[kind]}
    out = {k: v for k, v in a.items() if k not in skip or k in keep}
    for key in sorted(keep):
        if "." in key:  # another section's key (judge.*)
            part, name = key.split(".")
            out[OLD_NAMES.get(key, key)] = d[part][name]
    return out


def digest(path: Path, lines: int | None = None) -> dict[str, Any]:
    """Line count and hash of a ledger (its first ``lines`` lines): a checkpoint records it, a resume checks it."""
    kept = (complete_lines(path.read_bytes()) if path.exists() else [])[:lines]
    return {"lines": len(kept), "sha256": hashlib.sha256(b"".join(kept)).hexdigest()}


def check_prefix(path: Path, recorded: dict[str, Any], where: str) -> None:
    """The ledger still starts with the lines the checkpoint saw; they were paid for and trained on."""
    if recorded["lines"] == 0:
        return
    if not path.exists():
        raise LedgerError(
            f"{path} is missing, but {where} recorded {recorded['lines']} lines in it: those judgements were paid "
            "for; restore the file from a backup (bpo will not buy them again silently)"
        )
    if digest(path, recorded["lines"]) != {"lines": recorded["lines"], "sha256": recorded["sha256"]}:
        raise LedgerError(
            f"{path} differs from what {where} recorded (its first {recorded['lines']} lines were changed or "
            "lost); restore the ledger from a backup or start the run in another output_dir"
        )
