"""End-to-end runs of the online loop on tiny-random-llama: the mechanics of every mode."""

import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import adapters, tiny_config
from rich.console import Console

from bpo.config import load_config
from bpo.train.ledger import AnnotationLog
from bpo.train.loop import train
from bpo.train.phases import phase_bounds

T, B = 6, 4  # the tiny runs' steps and batch (tiny_config's defaults)


def adapter_hash(run, adapter: str = "behavior") -> str:
    h = hashlib.sha256()
    for name, p in sorted(run.ens.peft.named_parameters()):
        if f".{adapter}." in name:
            h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


def run_tiny(tmp_path, console=None, **over):
    cfg = load_config(None, tiny_config(tmp_path, **over))
    seen = []

    def record(run, step, m):
        if cfg.train.reference == "ema":
            m["_ema_hash"] = adapter_hash(run, "ema")
        seen.append((step, adapter_hash(run), m))

    train(cfg, evaluate=False, on_step=record, console=console)
    return cfg, seen


MODES = [
    # (F, reference, loss, K, T)
    (1, "behavior", "dpo", 1, T),
    (2, "behavior", "dpo", 1, T),
    (T, "behavior", "dpo", 1, T),
    (1, "sft", "dpo", 1, T),
    (2, "sft", "dpo", 1, T),
    (T, "sft", "dpo", 1, T),
    (2, "behavior", "ipo", 1, T),
    (2, "behavior", "slic", 1, T),
    (2, "sft", "simpo", 1, T),  # reference-free: train.reference is not read
    (2, "behavior", "dpo", 3, T),
    (2, "sft", "ipo", 3, T),
    (3, "ema", "dpo", 1, T),
    (3, "behavior", "dpo", 1, 7),  # F does not divide T: phases of 2, 2 and 3 steps
    (3, "ema", "dpo", 1, 7),
]


@pytest.mark.parametrize("phases, reference, loss, k, steps", MODES)
def test_modes(tmp_path, phases, reference, loss, k, steps):
    seeds = "[" + ",".join(str(i) for i in range(k)) + "]"
    over = {"train.phases": phases, "train.reference": reference, "train.loss": loss, "sft.seeds": seeds}
    cfg, seen = run_tiny(tmp_path, **over, **{"train.steps": steps})
    T = steps  # noqa: N806
    bounds = phase_bounds(T, phases)
    if T == 7:
        assert bounds == [0, 2, 4, 7]
    assert [s for s, _, _ in seen] == list(range(T))
    # the behavior adapter changes exactly at phase boundaries and nowhere else
    for (step, h, _), (_, prev, _) in zip(seen[1:], seen):
        assert (h != prev) == (step in bounds), f"step {step}"
    for step, _, m in seen:
        assert m["phase"] == max(p for p in range(phases) if bounds[p] <= step)
        assert all(math.isfinite(m[key]) for key in ("loss", "rewards/margins", "kl/behavior", "kl/behavior_to_sft"))
    # the behavior model is SFT until the first refresh, and for ever when F = 1
    for step, _, m in seen:
        if step < bounds[1]:
            assert abs(m["kl/behavior_to_sft"]) < 1e-3, (step, m["kl/behavior_to_sft"])
    if phases > 1 and reference == "behavior" and loss == "dpo":
        # the refreshed behavior model moved (a sample estimate over a few pairs: any sign, so the largest)
        assert max(abs(m["kl/behavior_to_sft"]) for s, _, m in seen if s >= bounds[1]) > 1e-3
    first_steps = [m for s, _, m in seen if s in bounds[:-1]]
    if reference == "behavior" and k == 1 and loss != "simpo":
        # pi_theta == pi_beta == pi_ref at a phase start: Delta = 0
        target = {"dpo": math.log(2), "ipo": (1 / (2 * cfg.train.beta)) ** 2, "slic": 1.0}[loss]
        for m in first_steps:
            assert m["loss"] == pytest.approx(target, abs=1e-4)
            assert abs(m["kl/behavior"]) < 1e-3
    if reference == "ema":
        # the paper's EMA reference moves at behavior refreshes only (step 0's update is a no-op: ema = behavior)
        hashes = [m["_ema_hash"] for _, _, m in seen]
        for step, (h, prev) in enumerate(zip(hashes[1:], hashes), start=1):
            assert (h != prev) == (step in bounds[1:-1]), f"ema at step {step}"
    if loss == "simpo":  # no reference: -log sigmoid(beta Delta - gamma) at the start, not log 2
        assert all(abs(m["loss"] - math.log(2)) > 1e-4 for m in first_steps)
    elif reference == "sft" and k == 1:
        assert seen[0][2]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # SFT = behavior at step 0 only
        later = [m["loss"] for s, _, m in seen if s in bounds[1:-1]]
        assert all(abs(v - math.log(2)) > 1e-4 for v in later)
    # the budget: every prompt used once and in the ledger; annotations = B*T - identical pairs, no duplicates
    log = AnnotationLog(Path(cfg.output_dir) / "annotations.jsonl")
    keys = [(e.phase, e.index) for e in log.entries]
    assert len(keys) == len(set(keys)) == B * T
    identical = [e for e in log.entries if e.identical]
    assert seen[-1][2]["pairs/identical"] == len(identical)
    assert seen[-1][2]["annotations/used"] == B * T - len(identical) == log.judged
    assert all((e.tokens[0] == e.tokens[1]) == e.identical for e in log.entries)
    assert all(e.choice is None and e.scores is None for e in identical)
    assert len({e.prompt_id for e in log.entries}) == len(log.entries)
    final = Path(cfg.output_dir) / "final"
    assert (final / "behavior" / "adapter_config.json").exists()
    assert len(list(final.glob("member*"))) == k


def test_identical_pairs_are_recorded_not_annotated(tmp_path):
    # near-greedy sampling: most pairs are identical
    cfg, seen = run_tiny(tmp_path, **{"sampling.temperature": 0.01, "sampling.max_new_tokens": 4})
    log = AnnotationLog(Path(cfg.output_dir) / "annotations.jsonl")
    identical = seen[-1][2]["pairs/identical"]
    assert identical > 0
    assert len(log.entries) == B * T and log.identical_pairs == identical
    assert seen[-1][2]["annotations/used"] == B * T - identical


def test_a_phase_of_identical_pairs_is_collected_once(tmp_path, monkeypatch):
    from bpo.model.sampling import HFBackend

    calls = []
    generate = HFBackend.generate

    def counting(self, prompt_ids, *args, **kwargs):
        calls.append(len(prompt_ids))
        return generate(self, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(HFBackend, "generate", counting)
    # temperature ~0: every pair is identical, so no step has a pair to train on
    cfg, seen = run_tiny(tmp_path, **{"sampling.temperature": 1e-6, "sampling.max_new_tokens": 3})
    assert seen[-1][2]["pairs/identical"] == B * T and seen[-1][2]["annotations/used"] == 0
    assert sum(calls) == B * T  # each prompt sampled once: no phase re-collected at every step
    assert [m["pairs/kept"] for _, _, m in seen] == [0] * T


def test_linear_merge_runs_without_dropout_and_is_logged(tmp_path):
    # K = 1: the linear merge is the member itself, so with no dropout the loss at a phase start is log 2
    # (PEFT's add_weighted_adapter copies the members' lora_dropout=0.1 into a fresh, training-mode Dropout)
    out = io.StringIO()
    cfg, seen = run_tiny(
        tmp_path, console=Console(file=out, width=200), **{"train.merge": "linear", "sampling.fold_adapter": False}
    )
    assert cfg.lora.dropout > 0
    for step, _, m in seen:
        if step in phase_bounds(T, cfg.train.phases)[:-1]:
            assert m["loss"] == pytest.approx(math.log(2), abs=1e-4), step
            assert abs(m["kl/behavior"]) < 1e-4
    assert "merge=linear" in out.getvalue()
    assert load_config(Path(cfg.output_dir) / "config.yaml").train.merge == "linear"


def cli(tmp_path, *extra):
    args = [
        sys.executable,
        "-m",
        "bpo.cli",
        "train",
        *tiny_config(
            tmp_path, **{"train.steps": 12, "train.phases": 2, "train.save_every": 4, "sampling.max_new_tokens": 24}
        ),
        *extra,
    ]
    return args


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref_dir, run_dir = tmp_path / "a", tmp_path / "b"
    subprocess.run(cli(ref_dir, "--no-eval"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cli(run_dir, "--no-eval"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run_dir / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 9:  # inside phase 2 (steps 6..11)
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "run" / "final").exists(), "the run finished before it was killed"
    latest = (run_dir / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-000008"  # resumes mid-phase: the behavior adapter comes from the checkpoint
    resumed = subprocess.run(
        [sys.executable, "-m", "bpo.cli", "train", "--resume", str(run_dir / "run"), "--no-eval"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = adapters(ref_dir / "run" / "final"), adapters(run_dir / "run" / "final")
    assert want.keys() == got.keys() and len(want) > 0
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0, msg=key)
    a = [json.loads(x) for x in (ref_dir / "run" / "annotations.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (run_dir / "run" / "annotations.jsonl").read_text().splitlines()]
    assert "ledger" in a[0] and a[0] == b[0]  # the header: what produced the judgements
    a, b = a[1:], b[1:]
    key = lambda e: (e["phase"], e["index"])  # noqa: E731
    assert len({key(e) for e in b}) == len(b), "duplicate annotations"
    assert sorted(map(key, a)) == sorted(map(key, b)), "a gap or an extra annotation"
    assert sorted(a, key=key) == sorted(b, key=key)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)), "metrics.jsonl repeats or skips a step after the resume"


def test_annotation_log_drops_a_line_cut_by_a_kill(tmp_path):
    from bpo.train.ledger import Annotation

    log = AnnotationLog(tmp_path / "a.jsonl")
    log.append([Annotation(0, i, f"p{i}", ["a", "b"], [[1], [2]], 0) for i in range(3)])
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write('{"phase": 0, "index": 3, "prompt_')
    again = AnnotationLog(tmp_path / "a.jsonl")
    assert [e.index for e in again.entries] == [0, 1, 2]
    assert (tmp_path / "a.jsonl").read_text().endswith("}\n")


def test_existing_run_needs_resume(tmp_path):
    from bpo.errors import ConfigError

    cfg, _ = run_tiny(tmp_path, **{"train.steps": 2, "train.phases": 1})
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        train(cfg, evaluate=False)


@pytest.mark.slow
def test_at_f_equal_t_phase_end_checkpoints_can_be_left_to_save_every(tmp_path):
    """At F = T every step ends a phase, so every step wrote a checkpoint (some 20 GB at the paper's scale)."""
    from bpo.errors import ConfigError

    over = {"train.steps": 6, "train.phases": 6, "train.save_every": 3}
    with pytest.raises(ConfigError, match="train.save_every = 0: must be >= 1 when train.save_phase_ends=false"):
        load_config(None, tiny_config(tmp_path / "c", **{"train.save_phase_ends": False}))
    run_tiny(tmp_path / "b", **over)  # the default: every phase end too (the newest two are kept)
    assert sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").glob("step-*"))[0] == "step-000005"
    whole, seen = [], []
    record = lambda into: lambda run, step, m: into.append((step, adapter_hash(run, "member0")))  # noqa: E731
    train(load_config(None, tiny_config(tmp_path / "a", **over, **{"train.save_phase_ends": False})),
          evaluate=False, on_step=record(whole))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "a" / "run" / "checkpoints").glob("step-*")) == [
        "step-000003",
        "step-000006",
    ]
    # killed after step 5, two phase ends past its last checkpoint (step 3): the resume redoes steps 4-5 exactly
    cfg = load_config(None, tiny_config(tmp_path / "d", **over, **{"train.save_phase_ends": False}))

    def kill(run, step, m):
        if step == 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, evaluate=False, on_step=kill)
    assert (tmp_path / "d" / "run" / "checkpoints" / "latest").read_text().strip() == "step-000003"
    train(cfg, resume=True, evaluate=False, on_step=record(seen))
    assert [s for s, _ in seen] == [3, 4, 5] and seen == whole[3:]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from bpo.train.step import NonFiniteError

    # an absurd lr blows the weights up after the first update: step 2's loss or gradient is not finite
    want = r"step 2 of run .*non-finite .*last good checkpoint is checkpoints/step-000001"
    with pytest.raises(NonFiniteError, match=want):
        run_tiny(tmp_path, **{"train.lr": 1e30, "train.save_every": 1})
    run = tmp_path / "run"
    assert not (run / "final").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000001"
    saved = adapters(run / "checkpoints" / "step-000001" / "adapters")
    assert saved and all(torch.isfinite(v).all() for v in saved.values())
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # the failed step is not logged


def test_nan_adapter_is_never_saved(tmp_path):
    from test_ensemble import make_ensemble

    ens = make_ensemble(k=1)
    with torch.no_grad():
        ens.member_parameters("member0")[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights"):
        ens.save(tmp_path, ["member0"])
    assert not (tmp_path / "member0").exists()


def test_bf16_reference_is_teacher_forced_so_phase_starts_are_exactly_log_2(tmp_path):
    # in bf16 the sampler's KV-cache decode rounds differently from the teacher-forced pass (measured on
    # tiny-random-llama: up to 4.5e-5 off log 2; on SmolLM2 up to 0.01 nats a sequence); the reference
    # must be the teacher-forced behavior model, so pi_theta == pi_ref holds exactly at a phase start
    out = io.StringIO()
    cfg, seen = run_tiny(tmp_path, console=Console(file=out, width=300), **{"model.dtype": "bf16", "train.phases": T})
    for _, _, m in seen:
        assert abs(m["loss"] - math.log(2)) < 1e-6, m["loss"]
        assert abs(m["kl/behavior"]) < 1e-6
    # and the run log says so: bf16 samples with the adapter unfolded, the reference is teacher-forced
    assert (
        "sampling: the behavior adapter unfolded (bfloat16 weights would round part of delta-W away); "
        "the reference log-probs (behavior) are teacher-forced, in bfloat16" in out.getvalue()
    )


def test_a_models_generation_config_is_named_and_changes_no_sample(tmp_path):
    # a model folder whose generation_config.json carries a repetition penalty and a minimum length trains on the
    # same samples, with the same sampler log-probs (fp32: BPO's reference), as the same weights without them
    from bpo.model.policy import load_policy

    ledgers = {}
    for name, extra in (("plain", {}), ("hub", {"repetition_penalty": 1.3, "min_new_tokens": 6})):
        policy = load_policy("tiny-random-llama", device="cpu")
        for k, v in extra.items():
            setattr(policy.model.generation_config, k, v)
        policy.model.save_pretrained(tmp_path / name)
        policy.tokenizer.save_pretrained(tmp_path / name)
        out = io.StringIO()
        over = {"model.name": str(tmp_path / name), "train.steps": 2, "train.phases": 1, "sft.epochs": 0}
        cfg, _ = run_tiny(tmp_path / f"run-{name}", console=Console(file=out, width=300), **over)
        log = AnnotationLog(Path(cfg.output_dir) / "annotations.jsonl").phase(0)
        ledgers[name] = [(a.tokens, a.behavior_logps) for _, a in sorted(log.items())]
        assert ("repetition_penalty=1.3" in out.getvalue()) == bool(extra)
    assert ledgers["hub"] == ledgers["plain"]
    assert "sampling: the behavior adapter folded into the float32 weights (the same model); the reference " \
        "log-probs are the sampler's own" in out.getvalue()  # fmt: skip


def test_each_step_logs_where_its_time_went(tmp_path):
    # sampling and annotation happen at phase starts only (F = 2, T = 6: steps 1 and 4); every step
    # references and updates; the parts never add up to more than the step
    cfg, seen = run_tiny(tmp_path)
    starts = {1, 4}
    for step, _, m in seen:
        assert ("time/sample" in m) == (step + 1 in starts), (step, m)
        assert ("time/annotate" in m) == (step + 1 in starts)
        assert m["time/reference"] >= 0 and m["time/update"] > 0
        parts = sum(v for k, v in m.items() if k.startswith("time/") and k != "time/step")
        assert parts <= m["time/step"] + 1e-3
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [("time/sample" in m) for m in logged] == [s + 1 in starts for s, _, _ in seen]


def test_sft_epochs_0_starts_the_members_at_the_model_itself(tmp_path):
    # no SFT (as TRL's online DPO): the members' delta-W is zero, so the SFT reference is the model itself
    from safetensors.torch import load_file

    cfg, seen = run_tiny(tmp_path, **{"sft.epochs": 0, "train.reference": "sft", "train.steps": 2})
    state = load_file(str(tmp_path / "sft" / "member0" / "adapter_model.safetensors"))
    b = [v for k, v in state.items() if "lora_B" in k]
    assert b and all(torch.count_nonzero(v) == 0 for v in b)
    assert seen[0][2]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at the first step


@pytest.mark.slow
def test_micro_batches_give_the_same_update(tmp_path):
    # gradient accumulation inside a step: the same metrics and the same adapters as the whole step at once
    from safetensors.torch import load_file

    runs = {}
    for mb in (4, 3, 0):  # B = 4 pairs: all at once, 3 + 1, and the CPU default (one at a time)
        _, seen = run_tiny(tmp_path / str(mb), **{"train.micro_batch": mb, "sft.seeds": "[0, 1]"})
        final = tmp_path / str(mb) / "run" / "final"
        runs[mb] = (seen, {f.relative_to(final): load_file(str(f)) for f in sorted(final.rglob("*.safetensors"))})
    whole, w_files = runs[4]
    assert len(w_files) >= 1
    for mb in (3, 0):
        micro, m_files = runs[mb]
        for (_, _, a), (_, _, b) in zip(whole, micro, strict=True):
            for key in ("loss", "grad_norm", "rewards/margins", "kl/behavior"):
                # summed log-probs of ~1e2 nats in fp32 differ by ~1e-5 with the padding width of the batch
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
        assert list(w_files) == list(m_files)
        for f, a in w_files.items():
            for k in a:
                torch.testing.assert_close(a[k], m_files[f][k], atol=1e-5, rtol=1e-4)


def test_metrics_reach_weights_and_biases_when_asked(tmp_path, monkeypatch):
    # a stand-in wandb module records what bpo hands it (the real package is not a dependency)
    import importlib.machinery
    import types

    calls = {"log": [], "summary": {}, "finish": 0}

    class FakeRun:
        summary = calls["summary"]

        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.update(init=kw) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config(None, tiny_config(tmp_path, **{"logging.wandb": True, "logging.wandb_project": "p"}))
    train(cfg)
    run = tmp_path / "run"
    assert calls["init"]["project"] == "p" and calls["init"]["name"] == "run" and calls["init"]["dir"] == str(run)
    assert calls["init"]["id"] == (run / "wandb-id").read_text() and calls["init"]["resume"] == "allow"
    assert [s for s, _ in calls["log"]] == list(range(1, T + 1)) and all("loss" in v for _, v in calls["log"])
    assert "eval/win_rate_vs_start" in calls["summary"] and calls["finish"] == 1


def test_wandb_asked_but_missing_is_one_line_before_anything_loads(tmp_path):
    from typer.testing import CliRunner

    from bpo.cli import app

    res = CliRunner().invoke(app, ["train", "quickstart", *tiny_config(tmp_path), "logging.wandb=true"])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: logging.wandb=true needs")
    assert not (tmp_path / "sft").exists() and not (tmp_path / "run").exists()


def test_the_optimizer_applies_train_weight_decay_and_adam_eps(tmp_path):
    """Nothing checked that AdamW gets weight_decay and eps: one step from the same start, three settings.

    AdamW's first step is p1 = p0 - lr * wd * p0 - lr * g / (|g| + eps) (decoupled decay, bias-corrected
    moments), so two runs that differ only in wd differ by exactly lr * wd * p0, and a larger eps damps
    every coordinate's move.
    """
    from conftest import adapters

    lr, wd = 5e-3, 0.5
    base = {"train.steps": 1, "train.phases": 1, "sft_dir": str(tmp_path / "sft"), "train.lr": lr}
    final = {}
    for name, over in {"plain": {}, "decay": {"train.weight_decay": wd}, "eps": {"train.adam_eps": 1.0}}.items():
        cfg = load_config(None, tiny_config(tmp_path, **base, **over, **{"output_dir": str(tmp_path / name)}))
        train(cfg, evaluate=False)
        final[name] = {k: v for k, v in adapters(tmp_path / name / "final").items() if k.startswith("member0/")}
    start = {f"member0/{k.split('/', 1)[1]}": v for k, v in adapters(tmp_path / "sft").items()}
    assert final["plain"].keys() == start.keys() and start
    moved = 0
    for k, p0 in start.items():
        plain, decay, eps = final["plain"][k], final["decay"][k], final["eps"][k]
        torch.testing.assert_close(plain - decay, lr * wd * p0, atol=2e-6, rtol=1e-4)
        step_plain, step_eps = (p0 - plain).abs(), (p0 - eps).abs()
        assert bool((step_eps <= step_plain + 1e-7).all())
        moved += int((step_eps < step_plain - 1e-6).sum())
    assert moved > 0  # eps = 1 shrank the moves: it reached the optimizer
