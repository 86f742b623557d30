"""``annotator.kind=human``: people label each phase's pairs in the browser (``bpo label RUN``).

The annotator is *deferred*: at a phase start the trainer samples the whole phase and hands it
here; the pairs go to the run's label queue (:mod:`bpo.human.labels`) and the run stops with
:class:`~bpo.errors.AwaitingLabels` (exit 0). ``bpo train --resume RUN`` asks again; once enough
pairs are labelled (``annotator.quorum``) each becomes a judgement, with who labelled it and when,
and training goes on to the next phase, where it stops again. With ``annotator.prelabel`` a model
annotator judges the phase first and people see only the pairs it could not decide
(``review=disagreements``) or all of them (``review=all``, which measures the model against people).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from bpo.annotators import Annotator, Judgement, PairsOnly, Sampled, build_annotator, register_annotator
from bpo.config import Config
from bpo.data import PromptRecord
from bpo.errors import AwaitingLabels, ConfigError
from bpo.human.labels import Item, LabelQueue, LabelStore, item_id, left_side
from bpo.io import write_text_atomic


class HumanAnnotator(PairsOnly):  # a Deferred annotator: the trainer queues a phase, then collects
    name = "human"

    def __init__(self, cfg: Config):
        self.cfg, self.queue = cfg, LabelQueue(cfg.output_dir)
        a = cfg.annotator
        if a.prelabel == "human":
            raise ConfigError("annotator.prelabel=human: the pre-labeller must be a model annotator")
        self.prelabeller: Annotator | None = None
        if a.prelabel:
            self.prelabeller = build_annotator(replace(cfg, annotator=replace(a, kind=a.prelabel)))

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        raise ConfigError(
            "annotator.kind=human labels a training run's phases (bpo train, then bpo label RUN); it cannot "
            "judge a file of pairs on the spot"
        )

    def queued(self, phase: int, fingerprint: str) -> bool:
        return self.queue.has(phase, fingerprint)

    def queue_phase(self, phase: int, records: list[PromptRecord], samples: list[Sampled], fingerprint: str) -> None:
        """The phase's pairs as label-queue items (which side the page shows each response on: a coin keyed by the
        run seed and the prompt), pre-labelled if configured, written to the label queue."""
        seed = self.cfg.train.seed
        items = [
            Item(item_id(phase, s.index), phase, s.index, s.prompt_id, s.prompt, s.responses, s.tokens,
                 s.behavior_logps, left_side(seed, s.prompt_id), s.identical)
            for s in samples
        ]  # fmt: skip
        if self.prelabeller is not None:
            asked = [k for k, i in enumerate(items) if not i.identical]
            verdicts = self.prelabeller.annotate(
                [records[k] for k in asked], [tuple(items[k].responses) for k in asked]
            )
            margin = self.cfg.annotator.review_margin
            for k, jd in zip(asked, verdicts):
                unsure = jd.choice is None or (jd.scores is not None and abs(jd.scores[0] - jd.scores[1]) <= margin)
                items[k].prelabel = {"choice": jd.choice, "scores": jd.scores, "rationale": jd.rationale}
                items[k].review = self.cfg.annotator.review == "all" or unsure
        self.queue.write(phase, items, fingerprint)

    def collect(self, phase: int, out: str) -> list[tuple[Item, Judgement, int, list[dict]]]:
        """Per pair of the phase: its judgement, the calls it cost and the people's labels.

        Raises :class:`AwaitingLabels` (after writing ``RUN/status.json``) while fewer than
        ``annotator.quorum`` of the pairs that need people are labelled.
        """
        a, status_file = self.cfg.annotator, Path(out) / "status.json"
        store = LabelStore(out, a.overlap)
        progress = store.progress(phase)
        need = progress["pairs"]
        if progress["labelled"] < a.quorum * need:
            status = {"status": "waiting for labels", **progress, "quorum": a.quorum, "overlap": a.overlap}
            write_text_atomic(status_file, json.dumps(status, indent=2))
            raise AwaitingLabels(
                f"phase {phase + 1} of {self.cfg.train.phases} waits for labels: {progress['labelled']} of {need} "
                f"pairs labelled (quorum {a.quorum:g}, {a.overlap} label(s) each). Label them: bpo label {out}   "
                f"then continue: bpo train --resume {out}"
            )
        state = store.current()
        out_rows = []
        for item in sorted((i for i in store.items.values() if i.phase == phase), key=lambda i: i.index):
            pre = item.prelabel or {}
            model = f"pre-label ({self.prelabeller.name}): {pre.get('choice')}" if pre else ""
            if not store.needs_people(item):
                jd = Judgement(pre.get("choice"), pre.get("scores"), model or None)
                out_rows.append((item, jd, int(bool(pre)), []))
                continue
            choice, got = store.verdict(item, state)
            given = [
                {k: v for k, v in asdict(e).items() if k in ("labeller", "choice", "left", "time", "source")}
                for e in got
            ]
            said = ", ".join(f"{e.labeller}: {'tie' if e.choice is None else e.choice}" for e in got)
            if len(got) < a.overlap:
                why = f"not labelled ({len(got)} of {a.overlap}; continued at quorum {a.quorum:g})"
            else:
                why = f"people ({said})" + ("" if choice is not None or len(got) < 2 else ": no majority, a tie")
            full = len(got) >= a.overlap
            jd = Judgement(
                choice if full else None,
                pre.get("scores"),
                "; ".join(x for x in (why, model) if x),
                unjudged=None if full and choice is not None else "tie" if full else "unlabelled",
            )
            out_rows.append((item, jd, len(got) + int(bool(pre)), given))
        status_file.unlink(missing_ok=True)
        return out_rows


register_annotator(
    "human",
    HumanAnnotator,
    help="people, in the browser: the run stops at each phase until `bpo label RUN` has its labels",
    per_response=False,
    deferred=True,
    ledger_keys=("overlap", "prelabel", "review", "review_margin"),
)
