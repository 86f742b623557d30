"""The BPO loop: collect a phase with the behavior model, annotate it, train K members on it.

    for step in 0..T-1:
        if step starts a phase (every T/F steps):
            behavior <- merge(members)                       # pi_beta <- pi_theta
            sample 2 responses for each of the phase's B*T/F prompts under behavior,
            annotate them, append them to the annotation log
        take this step's B pairs; drop identical pairs and ties
        reference log-probs: behavior (BPO), sft (online DAP), ema or tr (none for SimPO)
        for each member: DAP loss, backward, clip, AdamW step, LR step
        TR-DPO, every tau steps: tr <- alpha merge(members) + (1 - alpha) tr
        checkpoint every N steps and at each phase end

F = 1 is offline DAP (all pairs from the SFT ensemble), F = T is on-policy. The pieces: what the
loop works on (``bpo.train.run``: ``setup`` builds it), collecting a phase (``bpo.train.phases``),
one step (``bpo.train.step``), checkpoints and the ledger check (``bpo.train.checkpoint``), the
evaluation (``bpo.eval.evaluation``). ``train`` reads as: check, lock the run folder, check ledger
and checkpoint, ``setup``, ``prepare``, ``fit``, ``finish``.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from rich.console import Console
from rich.text import Text
from transformers import get_linear_schedule_with_warmup

from bpo import code_version
from bpo.annotators import check_annotator
from bpo.config import Config, save_config
from bpo.errors import ConfigError, Interrupted
from bpo.eval.evaluation import evaluate_run, print_result
from bpo.eval.report import load_run, run_warnings, write_report
from bpo.io import FolderLock, append_lines, read_jsonl, tidy, verify, write_json
from bpo.progress import Bars, Lines, LogConsole, StepClock, bar_text, progress_bar, step_line
from bpo.registry import REFERENCES
from bpo.train.checkpoint import (
    clean_leftovers,
    has_checkpoint,
    open_ledger,
    restore,
    save_checkpoint,
    save_final,
    trim_metrics,
    write_final_card,
)
from bpo.train.ledger import Annotation, AnnotationLog
from bpo.train.phases import collect_phase, phase_bounds
from bpo.train.references import BEHAVIOR
from bpo.train.run import Run, setup
from bpo.train.sft import check_sft_dir
from bpo.train.step import NonFiniteError, exactness_lines, total, train_step
from bpo.train.tracking import Trackers, check_wandb, win_rates


@dataclass
class Loop:
    """The loop's state besides the model: optimizers, schedules, ledger, logs, where to start."""

    optimizers: dict
    schedulers: dict
    log: AnnotationLog
    trackers: Trackers | None  # TensorBoard (+ W&B), main process only
    start: int
    done: int = 0  # steps completed (this session or before the resume)


def prepare(run: Run, log: AnnotationLog, found: tuple | None, console: Console) -> Loop:
    """Optimizers and schedules, restored from the checkpoint when there is one, and the metric writers."""
    t, out, acc = run.cfg.train, run.out, run.acc
    if acc.is_main_process:
        save_config(run.cfg, out / "config.yaml")
    optimizers = {  # the paper's code: transformers.AdamW, weight decay 0, eps 1e-6 (the defaults)
        m: torch.optim.AdamW(run.ens.member_parameters(m), lr=t.lr, weight_decay=t.weight_decay, eps=t.adam_eps)
        for m in run.ens.members
    }
    schedulers = {  # linear decay to zero over T steps, no warm-up (the paper)
        m: get_linear_schedule_with_warmup(o, num_warmup_steps=0, num_training_steps=t.steps)
        for m, o in optimizers.items()
    }
    start = restore(run, found, optimizers, schedulers)
    if acc.is_main_process:
        trim_metrics(out / "metrics.jsonl", start)
    lg = run.cfg.logging
    trackers = Trackers(out, run.cfg.to_dict(), lg.wandb, lg.wandb_project) if acc.is_main_process else None
    if acc.is_main_process and start == 0:
        console.print(
            f"[bold]bpo[/] {t.loss.upper()} reference={t.reference} F={t.phases} T={t.steps} "
            f"B={t.batch_size} K={len(run.ens.members)} merge={t.merge} (exact = mean of members' "
            f"delta-W; linear = PEFT linear, the paper's code) processes={acc.num_processes}"
        )
        for line in exactness_lines(run):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    return Loop(optimizers, schedulers, log, trackers, start, start)


def non_finite(run: Run, step: int, err: Exception) -> NonFiniteError:
    """The one-line refusal of a non-finite step, naming the last good checkpoint."""
    latest = run.out / "checkpoints" / "latest"
    kept = f"checkpoints/{latest.read_text().strip()}" if latest.exists() else "none (no checkpoint yet)"
    return NonFiniteError(
        f"step {step + 1} of run {run.out}: {err}; nothing of this step was saved, the last good checkpoint "
        f"is {kept}. Lower train.lr or train.beta, or check the annotator's scores, then start a new run"
    )


def fit(run: Run, loop: Loop, progress: Bars | Lines, started: float, on_step=None) -> None:
    """Steps ``loop.start`` .. T-1: refresh and collect at phase starts, one update per step, checkpoints."""
    t, acc, log = run.cfg.train, run.acc, loop.log
    bounds = phase_bounds(t.steps, t.phases)
    rule = REFERENCES.get(t.reference)  # where pi_ref sits and how it moves (bpo.train.references)
    pairs: dict[int, Annotation] = {}
    bar = progress.add_task("training", total=t.steps, completed=loop.start, quiet=True)
    clock = StepClock()
    for step in range(loop.start, t.steps):
        step_started = time.time()
        phase = max(p for p in range(t.phases) if bounds[p] <= step)
        offset = step - bounds[phase]
        if offset == 0:
            run.ens.merge(BEHAVIOR, t.merge)  # pi_beta <- pi_theta
            rule.refresh(run.ens, t)
        if not pairs or offset == 0:
            pairs = collect_phase(run, phase, log, progress)
        lo = offset * run.local_batch
        step_pairs = [pairs[i] for i in range(lo, lo + run.local_batch) if i in pairs]
        try:
            metrics = train_step(run, step_pairs, loop.optimizers, loop.schedulers)
        except NonFiniteError as err:
            raise non_finite(run, step, err) from None
        rule.after_step(run.ens, t, step)
        metrics.update(run.timer.pop())
        metrics["time/step"] = round(time.time() - step_started, 3)
        metrics.update(step=step + 1, phase=phase, time=round(time.time() - started, 2))
        device = run.policy.device
        metrics["annotations/used"] = total(acc, float(log.judged), device).item()
        metrics["annotations/calls"] = total(acc, float(log.calls), device).item()
        metrics["pairs/identical"] = total(acc, float(log.identical_pairs), device).item()
        if acc.is_main_process:
            append_lines(run.out / "metrics.jsonl", [json.dumps(metrics)])
            loop.trackers.log(metrics, step + 1)
            progress.update(bar, advance=1, description=bar_text(metrics))
            clock.add(metrics)
            phases_left = sum(b > step for b in bounds[:-1])
            progress.line(step_line(metrics, t.steps, clock.eta(t.steps - step - 1, phases_left)))
        loop.done = step + 1
        if on_step:
            on_step(run, step, metrics)
        end_of_phase = step + 1 == bounds[phase + 1]
        if (end_of_phase and t.save_phase_ends) or (t.save_every and (step + 1) % t.save_every == 0):
            save_checkpoint(run, step + 1, loop.optimizers, loop.schedulers)


def finish(run: Run, loop: Loop, progress: Bars | Lines, evaluate: bool, resume: bool, started: float) -> dict:
    """Final merge and save, the evaluation, and run.json (its presence marks the run finished)."""
    run.ens.merge(BEHAVIOR, run.cfg.train.merge)
    save_final(run)
    result = {}
    if run.acc.is_main_process:
        if evaluate and resume and (run.out / "eval.json").exists():  # resumed after its evaluation: same model
            result = json.loads((run.out / "eval.json").read_text())
        elif evaluate:
            result = evaluate_run(run, progress)
            write_json(run.out / "eval.json", tidy(result))
            loop.trackers.summary(win_rates(result))
        if result:
            write_final_card(run.out)  # the card with the evaluation's figures
        loop.trackers.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        info = {
            "wall_seconds": round(time.time() - started, 1),
            "peak_rss_mib": round(peak),
            "annotations": loop.log.judged,
            "annotator_calls": loop.log.calls,
            "identical_pairs": loop.log.identical_pairs,
            "pairs": loop.log.outcomes(),  # judged (trained on), identical, tie, invalid, unlabelled
            "steps": run.cfg.train.steps,
            "resumed": resume,
            "code": code_version(),  # which commit made this result
            "torch_threads": torch.get_num_threads(),  # CPU results differ in the last digits with it
        }
        if torch.cuda.is_available():
            info["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        journals = sorted(run.out.glob("judge-requests*.jsonl"))  # an LLM judge's requests, written before sent
        if journals:  # every request this run sent, those in flight at a kill included
            info["judge_requests"] = sum(len(read_jsonl(j)) for j in journals)
        info["warnings"] = run_warnings(load_run(run.out)["metrics"], result, run.cfg.train.steps)
        for line in info["warnings"]:
            progress.console.print(line, highlight=False, soft_wrap=True, markup=False)
        write_json(run.out / "run.json", info)
        try:  # the run is done and saved; a report that cannot be drawn must not undo that
            write_report([run.out], run.out)
        except Exception as err:  # noqa: BLE001 - said, not hidden: bpo report RUN redraws it
            progress.line(f"warning: {run.out}/report.md not written ({err}); try `bpo report {run.out}`")
    run.acc.wait_for_everyone()
    return result


def train(
    cfg: Config,
    resume: bool = False,
    console: Console | None = None,
    evaluate: bool = True,
    on_step: Callable[[Run, int, dict], None] | None = None,
) -> dict:
    """Run (or resume) a full training run; returns the final evaluation (or an empty dict).

    ``on_step(run, step, metrics)`` is called after every step (logging, inspection, tests).
    """
    console, out, started = console or LogConsole(), Path(cfg.output_dir), time.time()
    code_version()  # asked now, when the code is loaded; run.json says it at the end
    check_before_loading(cfg, evaluate)
    acc = Accelerator(cpu=cfg.device == "cpu")
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # bpo keeps the base model whole on every process and sums the members' LoRA gradients itself;
        # a sharding launcher would not shard anything, so it is refused instead of silently ignored
        raise ConfigError(
            f"accelerate launched bpo with {acc.distributed_type.value}; bpo trains data-parallel only (the "
            "model is whole on every process): launch with configs/accelerate/ddp.yaml"
        )
    lock = lock_run(out) if acc.is_main_process else None  # one writer per run folder
    # the other processes touch the folder only once it is locked and cleaned: the cleaning removes
    # *.tmp leftovers, and a rank's ledger being written right then is one (seen in CI, 2 processes)
    acc.wait_for_everyone()
    try:
        # after the lock: a second process started beside a running one is told "in use", not "--resume"
        if not resume and (has_checkpoint(out) or (out / "labels").is_dir()):
            raise ConfigError(f"{out} already holds a run: pass --resume {out} to continue it, or another output_dir")
        if resume and finished(out, console):
            return {}
        say = lambda m: console.print(Text(m, style="yellow"), soft_wrap=True) if acc.is_main_process else None  # noqa: E731
        log, found = open_ledger(cfg, acc, resume, say)
        with progress_bar(console) as progress:
            run = setup(cfg, progress, acc, evaluate)
            loop = prepare(run, log, found, console)
            try:
                fit(run, loop, progress, started, on_step)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"interrupted at step {loop.done + 1} of {cfg.train.steps}; "
                    f"continue with `bpo train --resume {out}`"
                ) from None
            result = finish(run, loop, progress, evaluate, resume, started)
    finally:
        if lock:
            lock.release()
    if acc.is_main_process and result:
        print_result(console, result, time.time() - started)
    return result


def check_before_loading(cfg: Config, evaluate: bool) -> None:
    """What can be refused in seconds: data files, the annotator's settings, the SFT cache, W&B, the evaluation."""
    cfg.check_sources()
    check_annotator(cfg)
    check_sft_dir(cfg)
    check_wandb(cfg.logging.wandb)
    if evaluate:
        cfg.check_evaluation()


def lock_run(out: Path) -> FolderLock:
    """The run folder's lock (the kernel drops it if this process dies), its leftovers of a kill removed."""
    try:
        lock = FolderLock(out)
    except OSError as err:
        raise ConfigError(f"output_dir {out} cannot be created or locked ({err}); choose a writable folder") from None
    clean_leftovers(out)
    return lock


def finished(out: Path, console: Console) -> bool:
    """A resumed run that has run.json is done (its missing report redrawn), unless final/ was lost since:
    then run.json goes and the last checkpoint rebuilds final/."""
    if not (out / "run.json").exists():
        return False
    problem = verify(out / "final")
    if problem is None:
        if not (out / "report.md").exists():  # killed between run.json and the report
            console.print(f"wrote {write_report([out], out)} (it was missing)")
        console.print(f"{out} is finished (it has run.json); nothing to do. To evaluate it again: bpo eval --help")
        return True
    console.print(f"{out}/final is not as the run saved it ({problem}); rebuilding it from the last checkpoint")
    (out / "run.json").unlink()
    return False
