"""Phases: which prompts each step and process takes, and collecting a phase's pairs.

At a phase start the frozen behavior model answers all of the phase's prompts (two samples
each) in large generation batches, the annotator judges the pairs, and every pair goes to the
ledger before any step trains on it. Collecting a whole phase at once is the same distribution as
sampling step by step (the behavior model is frozen inside a phase, and sampling is keyed by
prompt), so a resume, a bigger batch or more processes give the same samples.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from rich.progress import Progress

from bpo.data import PromptRecord
from bpo.ledger import Annotation, AnnotationLog
from bpo.sampling import HFBackend, identical

if TYPE_CHECKING:
    from bpo.trainer import Run


def local_shard(records: list[PromptRecord], b: int, rank: int, world: int) -> list[PromptRecord]:
    """Step t uses global prompts [t*B, (t+1)*B); process r takes every world-th of them."""
    return [r for i, r in enumerate(records) if (i % b) % world == rank]


def phase_bounds(steps: int, phases: int) -> list[int]:
    """Start step of each phase, then T: phase p covers steps [b[p], b[p+1]). T/F need not be whole."""
    return [p * steps // phases for p in range(phases + 1)]


def collect_phase(run: Run, phase: int, log: AnnotationLog, progress: Progress) -> dict[int, Annotation]:
    """Sample and annotate the phase's prompts that the log does not have yet; return the phase's pairs."""
    cfg, t = run.cfg, run.cfg.train
    bounds = phase_bounds(t.steps, t.phases)
    start = bounds[phase] * run.local_batch
    per_phase = (bounds[phase + 1] - bounds[phase]) * run.local_batch
    have = log.phase(phase)
    todo = [i for i in range(per_phase) if i not in have]
    params = replace(cfg.sampling, do_sample=True)
    backend = HFBackend(run.policy, run.ens)
    bar = progress.add_task(f"phase {phase}: sample + annotate", total=per_phase, completed=per_phase - len(todo))
    for i in range(0, len(todo), params.batch_size):
        chunk = todo[i : i + params.batch_size]
        records = [run.prompts[start + j] for j in chunk]
        keys = [f"{t.seed}:{r.id}" for r in records]
        groups = backend.generate([run.prompt_ids[start + j] for j in chunk], 2, params, "behavior", True, keys)
        keep = [(j, r, g) for j, r, g in zip(chunk, records, groups) if not identical(g)]
        judged = run.annotator.annotate([r for _, r, _ in keep], [(g[0].text, g[1].text) for _, _, g in keep])
        verdicts = {j: jd for (j, _, _), jd in zip(keep, judged)}
        entries = []
        for j, r, g in zip(chunk, records, groups):
            jd = verdicts.get(j)  # None: an identical pair, recorded so a resume neither samples nor counts it again
            entries.append(
                Annotation(
                    phase=phase,
                    index=j,
                    prompt_id=r.id,
                    responses=[g[0].text, g[1].text],
                    tokens=[g[0].token_ids, g[1].token_ids],
                    choice=jd.choice if jd else None,
                    scores=list(jd.scores) if jd and jd.scores else None,
                    rationale=jd.rationale if jd else None,
                    behavior_logps=[g[0].logp, g[1].logp],
                    identical=jd is None,
                    usage=jd.usage if jd else None,
                )
            )
        log.append(entries)
        progress.advance(bar, len(chunk))
    return log.phase(phase)
