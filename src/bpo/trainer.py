"""The BPO loop: collect a phase with the behavior model, annotate it, train K members on it.

    for step in 0..T-1:
        if step starts a phase (every T/F steps):
            behavior <- merge(members)                       # pi_beta <- pi_theta
            sample 2 responses for each of the phase's B*T/F prompts under behavior,
            annotate them, append them to the annotation log
        take this step's B pairs; drop identical pairs and ties
        reference log-probs: behavior (BPO), sft (online DAP) or ema
        for each member: DAP loss, backward, clip, AdamW step, LR step
        checkpoint every N steps and at each phase end

F = 1 is offline DAP (all pairs from the SFT ensemble), F = T is on-policy. Collecting a
whole phase at once is the same distribution as sampling step by step (the behavior model is
frozen inside a phase) and lets generation run in large batches. Sampling is keyed by prompt,
so the samples do not depend on batch size, process count or a resume.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from rich.progress import Progress
from rich.text import Text
from torch.utils.tensorboard import SummaryWriter

from bpo.annotators import Annotator, build_annotator
from bpo.checkpoint import (
    clean_leftovers,
    find_checkpoint,
    has_checkpoint,
    restore,
    save_checkpoint,
    save_final,
    trim_metrics,
)
from bpo.config import Config, ConfigError, save_config
from bpo.data import PromptRecord, load_source
from bpo.ensemble import Ensemble
from bpo.errors import BpoError, Interrupted
from bpo.evaluation import evaluate_run, print_result
from bpo.io import FolderLock, append_lines, write_json
from bpo.ledger import Annotation, AnnotationLog, ledger_settings
from bpo.logprobs import SharedPromptBatch, build_shared_batch
from bpo.losses import dap_loss
from bpo.models import Policy, load_policy
from bpo.progress import progress_bar
from bpo.sampling import HFBackend, identical
from bpo.sft import member_paths, run_sft, sft_done


class NonFiniteError(BpoError, RuntimeError):
    """A loss or gradient norm became NaN or infinite; the step is not applied and nothing is saved."""


@dataclass
class Run:
    """What the loop works on; built by :func:`setup`, so tests can drive pieces of it."""

    cfg: Config
    acc: Accelerator
    policy: Policy
    ens: Ensemble
    annotator: Annotator
    prompts: list[PromptRecord]  # this process's shard, step-major: step t's prompts are [t*b, (t+1)*b)
    prompt_ids: list[list[int]]
    out: Path
    local_batch: int

    def __post_init__(self) -> None:
        self.index = {r.id: i for i, r in enumerate(self.prompts)}


def _local_shard(records: list[PromptRecord], b: int, rank: int, world: int) -> list[PromptRecord]:
    """Step t uses global prompts [t*B, (t+1)*B); process r takes every world-th of them."""
    return [r for i, r in enumerate(records) if (i % b) % world == rank]


def setup(cfg: Config, progress: Progress, acc: Accelerator | None = None) -> Run:
    acc = acc or Accelerator(cpu=cfg.device == "cpu")
    t = cfg.train
    if t.batch_size % acc.num_processes:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by the {acc.num_processes} processes")
    out = Path(cfg.output_dir)
    policy = load_policy(cfg.model.name, acc.device, cfg.model.dtype, cfg.model.chat_template)
    needed = t.steps * t.batch_size
    records = load_source(cfg.data, "train", needed, policy.tokenizer)
    if len(records) < needed:
        raise ConfigError(
            f"data.train {cfg.data.train!r} has {len(records)} usable prompts; T*B = {t.steps}*{t.batch_size} "
            f"= {needed} are needed (each prompt is used once)"
        )
    records = records[:needed]

    if not sft_done(cfg):
        if acc.is_main_process:
            sft_records = load_source(cfg.data, "sft", cfg.data.sft_examples, policy.tokenizer)
            sft_policy = load_policy(cfg.model.name, acc.device, cfg.model.dtype, cfg.model.chat_template)
            run_sft(cfg, sft_policy, sft_records, progress)
            del sft_policy
        acc.wait_for_everyone()
    ens = Ensemble.from_adapters(policy.model, member_paths(cfg))
    policy.model.eval()
    ens.disable_dropout()  # no dropout anywhere during DAP training, as in the paper
    ens.merge("behavior", t.merge)
    ens.snapshot("behavior", "sft")
    if t.reference == "ema":
        ens.snapshot("behavior", "ema")
    shard = _local_shard(records, t.batch_size, acc.process_index, acc.num_processes)
    ids = [policy.encode_prompt(cfg.data.prompt_template.format(prompt=r.prompt)) for r in shard]
    return Run(cfg, acc, policy, ens, build_annotator(cfg), shard, ids, out, t.batch_size // acc.num_processes)


# ----------------------------------------------------------------------------- collection


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
                )
            )
        log.append(entries)
        progress.advance(bar, len(chunk))
    return log.phase(phase)


# ----------------------------------------------------------------------------- one step


def total(acc: Accelerator, x: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """``x`` summed over processes (TRL-style: accelerate's collectives, not raw torch.distributed)."""
    return acc.reduce(torch.as_tensor(x, device=device), "sum")


def reference_logps(
    run: Run, kept: list[Annotation], batch: SharedPromptBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Summed log-probs of each row under the reference, the behavior model and (when logged) SFT.

    The reference mode names the adapter that holds it (behavior: BPO; sft: online DAP; ema).
    In BPO the reference is the behavior model, whose log-probs the sampler already returned;
    they are reused when the model runs in fp32, where they equal the teacher-forced pass. In
    bf16/fp16 the batched decode with a KV cache rounds differently from the teacher-forced pass
    (the loss at a phase start is then not log 2), so the reference is computed by a forward pass.
    """
    t, ens = run.cfg.train, run.ens
    logged = [a.behavior_logps for a in kept]
    sampled = None
    if all(x and None not in x for x in logged):
        rows = [x[i] for a, x in zip(kept, logged) for i in (a.choice, 1 - a.choice)]
        sampled = torch.tensor(rows, device=batch.prompt_ids.device)
    exact = run.policy.model.dtype == torch.float32
    if t.reference == "behavior" and t.reference_from_sampler and exact and sampled is not None:
        ref = sampled
    else:
        ref = ens.logps(t.reference, batch)[0]
    if t.reference == "behavior":
        behavior = ref
    else:  # only for the KL metrics: the sampler's numbers are close enough there
        behavior = sampled if sampled is not None else ens.logps("behavior", batch)[0]
    sft = ref if t.reference == "sft" else (ens.logps("sft", batch)[0] if t.log_kl_sft else None)
    return ref, behavior, sft


def train_step(run: Run, pairs: list[Annotation], optimizers: dict, schedulers: dict) -> dict[str, float]:
    """One DAP update of every member on this step's pairs; returns global mean metrics."""
    t, ens, acc = run.cfg.train, run.ens, run.acc
    device = run.policy.device
    kept = [a for a in pairs if a.choice is not None]
    n_local = torch.tensor(float(len(kept)), device=device)
    n_global = total(acc, n_local, device).item()
    sums: dict[str, torch.Tensor] = {}
    lr = schedulers[ens.members[0]].get_last_lr()[0]  # the rate this step uses

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, torch.zeros((), device=device)) + value.detach().float() * n_local

    if kept:
        # rows are interleaved [chosen_0, rejected_0, chosen_1, ...]; each prompt runs once per forward
        prompts = [run.prompt_ids[run.index[a.prompt_id]] for a in kept]
        responses = [[a.tokens[a.choice], a.tokens[1 - a.choice]] for a in kept]
        batch = build_shared_batch(prompts, responses, run.policy.tokenizer.pad_token_id).to(device)
        ref_sum, behavior_sum, sft_sum = reference_logps(run, kept, batch)
        ref = ref_sum / batch.response_mask.sum(-1).float() if t.loss == "ipo" else ref_sum
        if sft_sum is not None:  # how far the data-collecting model has moved from SFT
            add("kl/behavior_to_sft", (behavior_sum - sft_sum).mean())
    for name in ens.members:
        params = ens.member_parameters(name)
        if kept:
            summed, mean = ens.logps(name, batch, grad=True)
            pol = mean if t.loss == "ipo" else summed
            losses, metrics = dap_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], t.loss, t.beta, t.label_smoothing)
            loss = losses.sum() / n_global
            loss.backward()
            for key, value in metrics.items():
                add(key, value / len(ens.members))
            add("kl/behavior", (behavior_sum - summed.detach()).mean() / len(ens.members))
        if n_global == 0:
            schedulers[name].step()  # keep the schedule aligned with the step count
            continue
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if acc.num_processes > 1:
                p.grad = acc.reduce(p.grad, "sum")
        norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        # every process decides alike: the norm is of all-reduced gradients, the loss flag is summed
        bad = float(bool(kept) and not torch.isfinite(loss).item())
        bad_loss = total(acc, bad, device).item()
        if bad_loss or not torch.isfinite(norm):
            what = "loss" if bad_loss else f"gradient norm ({norm.item()})"
            raise NonFiniteError(f"non-finite {what} in {name}; the update was not applied")
        add("grad_norm", norm / len(ens.members))
        optimizers[name].step()
        schedulers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
    if t.reference == "ema" and t.ema_update == "step":  # the named per-step variant, not the paper's
        ens.merge("current", t.merge)
        ens.ema_update("current", "ema", t.ema_alpha)
    names = sorted(sums) if acc.num_processes == 1 else sorted(set(gather_object(sorted(sums))))
    out = {}
    for name in names:
        summed = total(acc, sums.get(name, torch.zeros((), device=device)), device)
        out[name] = summed.item() / n_global if n_global else float("nan")
    scored = [sum(a.scores) / 2 for a in kept if a.scores is not None]
    score = total(acc, torch.tensor([sum(scored), len(scored)], dtype=torch.float64), device)
    if score[1] > 0:  # every process joins the reduction, even one with no scored pairs this step
        out["score/behavior_samples"] = (score[0] / score[1]).item()
    out["pairs/kept"] = n_global
    ties = sum(a.choice is None and not a.identical for a in pairs)
    out["pairs/ties"] = total(acc, float(ties), device).item()
    out["lr"] = lr
    return out


# ----------------------------------------------------------------------------- the loop


@dataclass
class Loop:
    """The loop's state besides the model: optimizers, schedules, ledger, logs, where to start."""

    optimizers: dict
    schedulers: dict
    log: AnnotationLog
    writer: SummaryWriter | None
    start: int
    done: int = 0  # steps completed (this session or before the resume)


def ledger_path(out: Path, acc: Accelerator) -> Path:
    return out / ("annotations.jsonl" if acc.num_processes == 1 else f"annotations.rank{acc.process_index}.jsonl")


def open_ledger(cfg: Config, acc: Accelerator, resume: bool, say) -> tuple[AnnotationLog, tuple | None]:
    """The ledger and the checkpoint to continue from, both checked before anything is loaded."""
    out = Path(cfg.output_dir)
    AnnotationLog(ledger_path(out, acc))  # first its lines: a duplicated or deleted one is named as such
    found = find_checkpoint(out, acc.num_processes, say) if resume else None  # then the prefix the checkpoint saw
    log = AnnotationLog(ledger_path(out, acc), ledger_settings(cfg, acc.num_processes), legacy_ok=resume)
    return log, found


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
        m: torch.optim.lr_scheduler.LambdaLR(o, lambda s: max(0.0, 1 - s / t.steps)) for m, o in optimizers.items()
    }
    start = restore(run, found, optimizers, schedulers)
    if acc.is_main_process:
        trim_metrics(out / "metrics.jsonl", start)
    writer = SummaryWriter(str(out / "tb")) if acc.is_main_process else None
    if acc.is_main_process and start == 0:
        console.print(
            f"[bold]bpo[/] {t.loss.upper()} reference={t.reference} F={t.phases} T={t.steps} "
            f"B={t.batch_size} K={len(run.ens.members)} merge={t.merge} (exact = mean of members' "
            f"delta-W; linear = PEFT linear, the paper's code) processes={acc.num_processes}"
        )
    return Loop(optimizers, schedulers, log, writer, start, start)


def fit(run: Run, loop: Loop, progress: Progress, started: float, on_step=None) -> None:
    """Steps ``loop.start`` .. T-1: refresh and collect at phase starts, one update per step, checkpoints."""
    t, acc, log = run.cfg.train, run.acc, loop.log
    bounds = phase_bounds(t.steps, t.phases)
    pairs: dict[int, Annotation] = {}
    bar = progress.add_task("training", total=t.steps, completed=loop.start)
    for step in range(loop.start, t.steps):
        phase = max(p for p in range(t.phases) if bounds[p] <= step)
        offset = step - bounds[phase]
        if offset == 0:
            run.ens.merge("behavior", t.merge)  # pi_beta <- pi_theta
            if t.reference == "ema" and t.ema_update == "refresh":  # the paper: EMA moves at refreshes only
                run.ens.ema_update("behavior", "ema", t.ema_alpha)
        if not pairs or offset == 0:
            pairs = collect_phase(run, phase, log, progress)
        lo = offset * run.local_batch
        step_pairs = [pairs[i] for i in range(lo, lo + run.local_batch) if i in pairs]
        try:
            metrics = train_step(run, step_pairs, loop.optimizers, loop.schedulers)
        except NonFiniteError as err:
            latest = run.out / "checkpoints" / "latest"
            kept = f"checkpoints/{latest.read_text().strip()}" if latest.exists() else "none (no checkpoint yet)"
            raise NonFiniteError(
                f"step {step + 1} of run {run.out}: {err}; nothing of this step was saved, the last good checkpoint "
                f"is {kept}. Lower train.lr or train.beta, or check the annotator's scores, then start a new run"
            ) from None
        metrics.update(step=step + 1, phase=phase, time=round(time.time() - started, 2))
        device = run.policy.device
        metrics["annotations/used"] = total(acc, float(log.judged), device).item()
        metrics["pairs/identical"] = total(acc, float(log.identical_pairs), device).item()
        if acc.is_main_process:
            append_lines(run.out / "metrics.jsonl", [json.dumps(metrics)])
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not math.isnan(value):
                    loop.writer.add_scalar(key, value, step + 1)
            progress.update(bar, advance=1, description=f"training loss {metrics.get('loss', float('nan')):.3f}")
        loop.done = step + 1
        if on_step:
            on_step(run, step, metrics)
        end_of_phase = step + 1 == bounds[phase + 1]
        if end_of_phase or (t.save_every and (step + 1) % t.save_every == 0):
            save_checkpoint(run, step + 1, loop.optimizers, loop.schedulers)


def finish(run: Run, loop: Loop, progress: Progress, evaluate: bool, resume: bool, started: float) -> dict:
    """Final merge and save, the evaluation, and run.json (its presence marks the run finished)."""
    run.ens.merge("behavior", run.cfg.train.merge)
    save_final(run)
    result = {}
    if run.acc.is_main_process:
        loop.writer.close()
        if evaluate:
            result = evaluate_run(run, progress)
            write_json(run.out / "eval.json", result)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        info = {
            "wall_seconds": round(time.time() - started, 1),
            "peak_rss_mib": round(peak),
            "annotations": loop.log.judged,
            "identical_pairs": loop.log.identical_pairs,
            "steps": run.cfg.train.steps,
            "resumed": resume,
        }
        if torch.cuda.is_available():
            info["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        write_json(run.out / "run.json", info)
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
    console = console or Console()
    out = Path(cfg.output_dir)
    cfg.check_sources()
    if not resume and has_checkpoint(out):
        raise ConfigError(f"{out} already holds a run: pass --resume {out} to continue it, or another output_dir")
    if resume and (out / "run.json").exists():
        console.print(f"{out} is finished (it has run.json); nothing to do. To evaluate it again: bpo eval --help")
        return {}
    started = time.time()
    acc = Accelerator(cpu=cfg.device == "cpu")
    lock = None
    if acc.is_main_process:  # one writer per run folder; the kernel drops the lock if this process dies
        try:
            lock = FolderLock(out)
        except OSError as err:
            raise ConfigError(
                f"output_dir {out} cannot be created or locked ({err}); choose a writable folder"
            ) from None
        clean_leftovers(out)
    try:
        say = (
            (lambda msg: console.print(Text(msg, style="yellow"), soft_wrap=True))
            if acc.is_main_process
            else (lambda m: None)
        )
        log, found = open_ledger(cfg, acc, resume, say)
        with progress_bar(console) as progress:
            run = setup(cfg, progress, acc)
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
