"""Phases: which prompts each step and process takes, and collecting a phase's pairs.

At a phase start the frozen behavior model answers all of the phase's prompts (two samples
each) in large generation batches, the annotator judges the pairs, and every pair goes to the
ledger before any step trains on it. Collecting a whole phase at once is the same distribution as
sampling step by step (the behavior model is frozen inside a phase, and sampling is keyed by
prompt), so a resume, a bigger batch or more processes give the same samples.
"""

from __future__ import annotations

import random
from dataclasses import replace

from bpo.annotators import Deferred, Judgement, Sampled, check_finite
from bpo.data import PromptRecord
from bpo.errors import ConfigError
from bpo.model.sampling import identical, make_backend
from bpo.progress import Bars, Lines
from bpo.train.ledger import Annotation, AnnotationLog, outcome_counts
from bpo.train.run import Run


def phase_bounds(steps: int, phases: int) -> list[int]:
    """Start step of each phase, then T: phase p covers steps [b[p], b[p+1]). T/F need not be whole."""
    return [p * steps // phases for p in range(phases + 1)]


def collect_phase(run: Run, phase: int, log: AnnotationLog, progress: Bars | Lines) -> dict[int, Annotation]:
    """Sample and annotate the phase's prompts that the log does not have yet; return the phase's pairs."""
    cfg, t = run.cfg, run.cfg.train
    bounds = phase_bounds(t.steps, t.phases)
    start = bounds[phase] * run.local_batch
    per_phase = (bounds[phase + 1] - bounds[phase]) * run.local_batch
    have = log.phase(phase)
    todo = [i for i in range(per_phase) if i not in have]
    if isinstance(run.annotator, Deferred):
        return collect_deferred(run, phase, log, progress, todo, start)
    bar = progress.add_task(f"phase {phase}: sample + annotate", total=per_phase, completed=per_phase - len(todo))
    batch = cfg.sampling.batch_size
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        records, keys, groups = sample(run, start, chunk)
        with run.timer.part("annotate"):
            judged = judge(run, records, groups, keys)
        entries = []
        for j, r, g, (jd, calls) in zip(chunk, records, groups, judged):
            # jd None: identical samples, recorded so a resume neither samples nor counts them again
            entries.append(
                Annotation(
                    phase=phase,
                    index=j,
                    prompt_id=r.id,
                    responses=[c.text for c in g],
                    tokens=[c.token_ids for c in g],
                    choice=jd.choice if jd else None,
                    scores=list(jd.scores) if jd and jd.scores else None,
                    rationale=jd.rationale if jd else None,
                    behavior_logps=[c.logp for c in g],
                    identical=jd is None,
                    usage=jd.usage if jd else None,
                    rejected=jd.rejected if jd else None,
                    calls=calls,
                    unjudged=jd.unjudged if jd and jd.choice is None else None,
                )
            )
        log.append(entries)
        progress.advance(bar, len(chunk))
    pairs = log.phase(phase)
    spent = run.timer.seconds
    progress.line(
        f"phase {phase}: {len(pairs)} prompts ({len(todo)} sampled now), {outcome_line(pairs.values())}; "
        f"sampling {spent.get('sample', 0):.1f} s, annotator {spent.get('annotate', 0):.1f} s"
    )
    return pairs


def outcome_line(entries) -> str:
    """'12 judged, 3 identical pairs, 1 tie' and, when there are any, the invalid answers and unlabelled pairs."""
    c = outcome_counts(list(entries))
    extra = "".join(f", {c[k]} {k}" for k in ("invalid", "unlabelled") if c[k])
    return f"{c['judged']} judged, {c['identical']} identical pairs, {c['tie']} ties{extra}"


def sample(run: Run, start: int, chunk: list[int]) -> tuple[list[PromptRecord], list[str], list]:
    """The behavior model's samples for the phase's prompts ``chunk`` (keyed: the same on a resume)."""
    params = run.cfg.sampling
    records = [run.prompts[start + j] for j in chunk]
    keys = [f"{run.cfg.train.seed}:{r.id}" for r in records]
    with run.timer.part("sample"):
        groups = make_backend(run.policy, run.ens, run.cfg).generate(
            [run.prompt_ids[start + j] for j in chunk], params.n, params, "behavior", True, keys
        )
    return records, keys, groups


def collect_deferred(
    run: Run, phase: int, log: AnnotationLog, progress: Bars | Lines, todo: list[int], start: int
) -> dict[int, Annotation]:
    """A phase judged later (people): sample it all into the label queue once, then take its verdicts.

    The annotator raises :class:`~bpo.errors.AwaitingLabels` while the labels are not in; the
    queue keeps the samples (tokens and log-probs too), so the resume trains on what was shown.
    """
    ann, fp = run.annotator, log.header["fingerprint"]
    if run.acc.num_processes > 1:
        raise ConfigError(
            f"annotator.kind={run.cfg.annotator.kind} runs in one process (people, not compute, set the pace)"
        )
    if todo and not ann.queued(phase, fp):
        records, samples = sample_for_people(run, phase, todo, start, progress)
        with run.timer.part("annotate"):
            ann.queue_phase(phase, records, samples, fp)
    if todo:
        wanted = set(todo)  # a kill mid-append left some in the ledger: never twice
        entries = [
            Annotation(
                phase=phase,
                index=item.index,
                prompt_id=item.prompt_id,
                responses=item.responses,
                tokens=item.tokens,
                choice=jd.choice,
                scores=list(jd.scores) if jd.scores else None,
                rationale=jd.rationale,
                behavior_logps=item.behavior_logps,
                identical=item.identical,
                calls=calls,
                labels=labels or None,
                unjudged=jd.unjudged if jd.choice is None and not item.identical else None,
            )
            for item, jd, calls, labels in ann.collect(phase, str(run.out))
            if item.index in wanted
        ]
        log.append(entries)
    pairs = log.phase(phase)
    labelled = sum(bool(a.labels) for a in pairs.values())
    progress.line(f"phase {phase}: {len(pairs)} pairs, {labelled} labelled by people; {outcome_line(pairs.values())}")
    return pairs


def sample_for_people(run: Run, phase: int, todo: list[int], start: int, progress: Bars | Lines) -> tuple:
    """The phase's samples, as a deferred annotator is handed them."""
    bar = progress.add_task(f"phase {phase}: sample for people", total=len(todo))
    samples, records = [], []
    for i in range(0, len(todo), run.cfg.sampling.batch_size):
        chunk = todo[i : i + run.cfg.sampling.batch_size]
        got, _, groups = sample(run, start, chunk)
        for j, r, g in zip(chunk, got, groups):
            texts, tokens, logps = [c.text for c in g], [c.token_ids for c in g], [c.logp for c in g]
            samples.append(Sampled(j, r.id, r.prompt, texts, tokens, logps, identical(g)))
        records += got
        progress.advance(bar, len(chunk))
    return records, samples


def judge(run: Run, records: list[PromptRecord], groups: list, keys: list[str]) -> list[tuple[Judgement | None, int]]:
    """Per prompt, the annotator's judgement of its samples (None: all identical) and the calls it cost.

    Two samples: the pair is judged (a scorer: two calls, one per response; a pairwise judge: one
    per question it was asked). Best-of-n (``sampling.n`` > 2): ``best_worst`` scores every sample
    (n calls) and trains the best against the worst, a tie when they score alike; ``random`` judges
    one pair drawn by the prompt's key, so a resume draws it again.
    """
    n, how = run.cfg.sampling.n, run.cfg.sampling.pairs
    out: list[tuple[Judgement | None, int]] = [(None, 0)] * len(groups)
    if n > 2 and how == "best_worst":
        todo = [i for i, g in enumerate(groups) if not identical(g)]
        flat = run.annotator.scores(
            [records[i] for i in todo for _ in range(n)], [c.text for i in todo for c in groups[i]]
        )
        for k, i in enumerate(todo):
            sc = flat[k * n : (k + 1) * n]
            check_finite(run.annotator.name, records[i], sc)
            hi, lo = sc.index(max(sc)), sc.index(min(sc))
            tie = sc[hi] == sc[lo]
            out[i] = (Judgement(None if tie else hi, tuple(sc), rejected=lo, unjudged="tie" if tie else None), n)
        return out
    picks = [(0, 1) if n == 2 else tuple(sorted(random.Random(key).sample(range(n), 2))) for key in keys]
    todo = [i for i, (g, (a, b)) in enumerate(zip(groups, picks)) if not identical([g[a], g[b]])]
    pairs = [(groups[i][picks[i][0]].text, groups[i][picks[i][1]].text) for i in todo]
    for i, jd in zip(todo, run.annotator.annotate([records[i] for i in todo], pairs)):
        a, b = picks[i]
        if n > 2:  # indices into all n samples
            jd = replace(
                jd,
                choice=None if jd.choice is None else (a, b)[jd.choice],
                rejected=None if jd.choice is None else (b, a)[jd.choice],
            )
        out[i] = (jd, jd.calls)
    return out
