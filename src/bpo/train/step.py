"""One training step: the reference log-probs, then a DAP update of every ensemble member.

Every member gets the same pairs and the same reference log-probs and takes its own AdamW step
(the paper's ensemble). Metrics are averaged over members and summed over processes with
accelerate's collectives, TRL's names. A non-finite loss or gradient norm stops the step before
any parameter moves.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from bpo.errors import BpoError
from bpo.model.logprobs import SharedPromptBatch, build_shared_batch
from bpo.model.sampling import ignored_generation_settings
from bpo.registry import LOSSES, REFERENCES
from bpo.train.ledger import Annotation, outcome_counts
from bpo.train.losses import dap_loss
from bpo.train.references import BEHAVIOR, SFT
from bpo.train.run import Run


class NonFiniteError(BpoError, RuntimeError):
    """A loss or gradient norm became NaN or infinite; the step is not applied and nothing is saved."""


def total(acc: Accelerator, x: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """``x`` summed over processes (TRL-style: accelerate's collectives, not raw torch.distributed)."""
    return acc.reduce(torch.as_tensor(x, device=device), "sum")


def reference_logps(
    run: Run, kept: list[Annotation], batch: SharedPromptBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Summed log-probs of each row under the reference, the behavior model and (when logged) SFT.

    The reference rule names the adapter that holds it (``bpo.train.references``: behavior for BPO, sft ...).
    In BPO the reference is the behavior model, whose log-probs the sampler already returned;
    they are reused when the model runs in fp32, where they equal the teacher-forced pass. In
    bf16/fp16 the batched decode with a KV cache rounds differently from the teacher-forced pass
    (the loss at a phase start is then not log 2), so the reference is computed by a forward pass of the
    same model that sampled (the adapter unfolded: :meth:`Ensemble.folds_exactly`).
    """
    t, ens = run.cfg.train, run.ens
    # a reference-free loss reads none: the behavior model's then costs nothing in fp32 (the sampler's) and
    # still gives the KL metrics
    mode = REFERENCES.get(t.reference).adapter if LOSSES.get(t.loss).reference else BEHAVIOR
    logged = [a.behavior_logps for a in kept]
    sampled = None
    if all(x and None not in x for x in logged):
        rows = [x[i] for a, x in zip(kept, logged) for i in a.trained_pair()]
        sampled = torch.tensor(rows, device=batch.prompt_ids.device)
    if mode == BEHAVIOR and sampler_is_reference(run) and sampled is not None:
        ref = sampled
    else:
        ref = ens.logps(mode, batch)[0]
    if mode == BEHAVIOR:
        behavior = ref
    else:  # only for the KL metrics: the sampler's numbers are close enough there
        behavior = sampled if sampled is not None else ens.logps(BEHAVIOR, batch)[0]
    sft = ref if mode == SFT else (ens.logps(SFT, batch)[0] if t.log_kl_sft else None)
    return ref, behavior, sft


def sampler_is_reference(run: Run) -> bool:
    """BPO's reference log-probs are the sampler's own (no forward pass) only where they are the teacher-forced
    numbers: in fp32, where they agree to about 1e-5 nats a response (``docs/benchmarks/sampler-logps.md``)."""
    t = run.cfg.train
    return t.reference_from_sampler and run.cfg.sampling.backend == "hf" and run.policy.model.dtype == torch.float32


def exactness_lines(run: Run) -> list[str]:
    """What the run log says of the model that samples and of where the reference log-probs come from."""
    t, s, ens = run.cfg.train, run.cfg.sampling, run.ens
    dtype = str(run.policy.model.dtype).removeprefix("torch.")
    if s.backend != "hf":
        how = f"sampling: the {s.backend} engine is given each phase's behavior model"
        if (s.backend == "llamacpp" or run.cfg.engine.weights == "hook") and not ens.folds_exactly("behavior"):
            how += (
                f" as merged {dtype} weights, which round part of delta-W away (backend=openai with "
                "engine.weights=lora gives it the adapter whole)"
            )
    elif s.fold_adapter and ens.folds_exactly("behavior"):
        how = f"sampling: the behavior adapter folded into the {dtype} weights (the same model)"
    elif s.fold_adapter:
        how = f"sampling: the behavior adapter unfolded ({dtype} weights would round part of delta-W away)"
    else:
        how = "sampling: the behavior adapter unfolded (sampling.fold_adapter=false)"
    if not LOSSES.get(t.loss).reference:
        ref = f"{t.loss} reads no reference"
    elif REFERENCES.get(t.reference).adapter == BEHAVIOR and sampler_is_reference(run):
        ref = "the reference log-probs are the sampler's own (fp32: those of a teacher-forced pass)"
    else:
        ref = f"the reference log-probs ({t.reference}) are teacher-forced, in {dtype}"
    lines = [f"{how}; {ref}"]
    ignored = ignored_generation_settings(run.policy.model)
    if ignored:
        named = ", ".join(f"{k}={v}" for k, v in ignored.items())
        lines.append(
            f"note: {run.cfg.model.name}'s generation_config sets {named}; bpo samples without them (sampling.* "
            "alone), so the samples and their log-probs are the model's own"
        )
    return lines


class Sums:
    """Per-pair metrics summed over the step (each weighted by its pairs), divided by the global count at the end."""

    def __init__(self, device: torch.device):
        self.device, self.values = device, {}

    def add(self, name: str, value: torch.Tensor, weight: int) -> None:
        zero = torch.zeros((), device=self.device)
        self.values[name] = self.values.get(name, zero) + value.detach().float() * weight


def train_step(run: Run, pairs: list[Annotation], optimizers: dict, schedulers: dict) -> dict[str, float]:
    """One DAP update of every member on this step's pairs; returns global mean metrics.

    The pairs go through the model ``train.micro_batch`` prompts at a time, each micro-batch's loss
    scaled by the step's global pair count, so the gradients add up to the whole step's before the
    one optimizer step: the update is the same, the activations held are a micro-batch's.
    """
    ens, acc = run.ens, run.acc
    device = run.policy.device
    kept = [a for a in pairs if a.choice is not None]
    n_global = total(acc, float(len(kept)), device).item()
    sums = Sums(device)
    lr = schedulers[ens.members[0]].get_last_lr()[0]  # the rate this step uses
    micro = micro_batches(run, kept, sums)
    with run.timer.part("update"):  # every member's forwards, backwards and optimizer step
        for name in ens.members:
            update_member(run, name, micro, n_global, sums, optimizers[name], schedulers[name])
    out = step_metrics(acc, sums, n_global, pairs, kept)
    out["lr"] = lr
    return out


def micro_batches(run: Run, kept: list[Annotation], sums: Sums) -> list[tuple]:
    """The step's pairs in micro-batches, each with its reference and behavior log-probs."""
    t, device = run.cfg.train, run.policy.device
    # 0: one prompt at a time on CPU (benchmarks/vs_trl.py: as fast as the whole step, a quarter of the
    # peak memory), the whole step on a GPU, where bigger matmuls pay
    size = t.micro_batch or (1 if device.type == "cpu" else max(len(kept), 1))
    micro = []
    for chunk in (kept[i : i + size] for i in range(0, len(kept), size)):
        # rows are interleaved [chosen_0, rejected_0, chosen_1, ...]; each prompt runs once per forward
        prompts = [run.prompt_ids[run.index[a.prompt_id]] for a in chunk]
        responses = [[a.tokens[i] for i in a.trained_pair()] for a in chunk]
        batch = build_shared_batch(prompts, responses, run.policy.tokenizer.pad_token_id).to(device)
        with run.timer.part("reference"):
            ref_sum, behavior_sum, sft_sum = reference_logps(run, chunk, batch)
        declared = LOSSES.get(t.loss)
        if not declared.reference:
            ref = torch.zeros_like(ref_sum)
        else:
            ref = ref_sum / batch.response_mask.sum(-1).float() if declared.mean_logps else ref_sum
        if sft_sum is not None:  # how far the data-collecting model has moved from SFT
            sums.add("kl/behavior_to_sft", (behavior_sum - sft_sum).mean(), len(chunk))
        micro.append((len(chunk), batch, ref, behavior_sum))
    return micro


def update_member(run: Run, name: str, micro: list[tuple], n_global: float, sums: Sums, optimizer, scheduler) -> None:
    """Forward and backward over every micro-batch, then one clipped AdamW step (refused if non-finite)."""
    t, ens, acc, device = run.cfg.train, run.ens, run.acc, run.policy.device
    k, params, finite = len(ens.members), ens.member_parameters(name), True
    declared = LOSSES.get(t.loss)
    hyper = declared.values(t)  # the loss's own hyper-parameters
    for n, batch, ref, behavior_sum in micro:
        summed, mean = ens.logps(name, batch, grad=True)
        pol = mean if declared.mean_logps else summed
        losses, metrics = dap_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], t.loss, t.beta, **hyper)
        loss = losses.sum() / n_global
        finite = finite and bool(torch.isfinite(loss).item())
        loss.backward()
        for key, value in metrics.items():
            sums.add(key, value / k, n)
        sums.add("kl/behavior", (behavior_sum - summed.detach()).mean() / k, n)
    if n_global == 0:
        scheduler.step()  # keep the schedule aligned with the step count
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if acc.num_processes > 1:
            p.grad = acc.reduce(p.grad, "sum")
    norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
    # every process decides alike: the norm is of all-reduced gradients, the loss flag is summed
    bad_loss = total(acc, float(not finite), device).item()
    if bad_loss or not torch.isfinite(norm):
        what = "loss" if bad_loss else f"gradient norm ({norm.item()})"
        raise NonFiniteError(f"non-finite {what} in {name}; the update was not applied")
    sums.add("grad_norm", norm / k, sum(n for n, *_ in micro))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def step_metrics(acc: Accelerator, sums: Sums, n_global: float, pairs: list[Annotation], kept: list) -> dict:
    """The step's metrics, mean over all processes' pairs, with the pair counts."""
    device = sums.device
    names = sorted(sums.values) if acc.num_processes == 1 else sorted(set(gather_object(sorted(sums.values))))
    out = {}
    for name in names:
        summed = total(acc, sums.values.get(name, torch.zeros((), device=device)), device)
        out[name] = summed.item() / n_global if n_global else float("nan")
    scored = [sum(a.scores) / len(a.scores) for a in kept if a.scores is not None]
    score = total(acc, torch.tensor([sum(scored), len(scored)], dtype=torch.float64), device)
    if score[1] > 0:  # every process joins the reduction, even one with no scored pairs this step
        out["score/behavior_samples"] = (score[0] / score[1]).item()
    out["pairs/kept"] = n_global
    counts = outcome_counts(pairs)
    for key, name in (("tie", "pairs/ties"), ("invalid", "pairs/invalid"), ("unlabelled", "pairs/unlabelled")):
        out[name] = total(acc, float(counts[key]), device).item()
    return out
