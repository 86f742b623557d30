"""``bpo compare``: a grid of methods x seeds at equal annotation budget.

Each run is ``bpo train`` in its own process (so its wall time and peak memory are its own)
under ``OUT/<method>/seed<k>``. A run with an ``eval.json`` is finished and is not repeated; a
run with a checkpoint is resumed. The report (:mod:`bpo.eval.grid_report`) is rebuilt from the
run folders every time.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from bpo.config import load_config, sft_key
from bpo.errors import BpoError, Interrupted
from bpo.registry import ANNOTATOR_KINDS


class GridError(BpoError, RuntimeError):
    """A run of the grid failed; the message carries its own error line."""


# method -> (what it is, its overrides of the grid's config); {T} is replaced by train.steps, {T/4} by a quarter of
# it. Every method spends B*T annotations. The loss is train.loss (dpo unless overridden) except for SimPO's.
# `bpo compare --list` prints this table.
TR = ["train.phases={T}", "train.reference=tr"]  # online DPO with TR-DPO's moving reference (arXiv 2404.09656)
SIMPO = ["train.loss=simpo", "train.beta=2.0", "train.simpo_gamma=1.0"]  # arXiv 2405.14734: beta 2, gamma/beta 0.5
K1, K5 = "sft.seeds=[0]", "sft.seeds=[0,1,2,3,4]"  # ensemble size K: one member per SFT seed (the presets' K is 2)
METHODS: dict[str, tuple[str, list[str]]] = {
    "offline-dpo": ("offline DPO: all pairs from the SFT model", ["train.phases=1", "train.reference=sft"]),
    "online-dpo-sft": ("online DPO, new pairs every step, reference SFT", ["train.phases={T}", "train.reference=sft"]),
    "bpo-f2": ("BPO with one extra annotation phase (F = 2)", ["train.phases=2", "train.reference=behavior"]),
    "bpo-fT": ("on-policy BPO: behavior refreshed every step", ["train.phases={T}", "train.reference=behavior"]),
    "tr-dpo-soft": ("TR-DPO soft update, alpha 0.6, tau 1", [*TR, "train.ref_model_mixup_alpha=0.6",
                                                              "train.ref_model_sync_steps=1"]),
    "tr-dpo-hard": ("TR-DPO hard update every T/4 steps", [*TR, "train.ref_model_mixup_alpha=1.0",
                                                            "train.ref_model_sync_steps={T/4}"]),
    "simpo": ("SimPO, the paper's protocol: pairs once from the start model", ["train.phases=1", *SIMPO]),
    "simpo-fT": ("SimPO with new pairs every step", ["train.phases={T}", *SIMPO]),
    "bpo-f2-k1": ("BPO F = 2 with one LoRA (K = 1)", ["train.phases=2", "train.reference=behavior", K1]),
    "bpo-fT-k1": ("BPO F = T with one LoRA (K = 1)", ["train.phases={T}", "train.reference=behavior", K1]),
    "bpo-f2-k5": ("BPO F = 2 with the paper's K = 5", ["train.phases=2", "train.reference=behavior", K5]),
    "bpo-fT-k5": ("BPO F = T with the paper's K = 5", ["train.phases={T}", "train.reference=behavior", K5]),
}  # fmt: skip


def method_table() -> list[str]:
    """``bpo compare --list``: each method, what it is and its overrides."""
    return [f"{name}: {what}\n    {' '.join(over)}" for name, (what, over) in METHODS.items()]


def parse_claims(text: str, methods: list[str] | None = None) -> list[tuple[str, str]]:
    """``"bpo-f2>offline-dpo,bpo-fT>online-dpo-sft"`` -> [(method, baseline), ...]: each claims the first
    beats the second. Both must be methods of the grid."""
    claims = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition(">")
        if not sep or not a or not b:
            raise ValueError(f"claim {part!r}: write it as METHOD>BASELINE, e.g. bpo-f2>offline-dpo")
        for m in (a, b):
            if m not in (methods or METHODS):
                raise ValueError(f"claim {part!r}: {m} is not a method of this grid ({', '.join(methods or METHODS)})")
        claims.append((a, b))
    return claims


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGTERM when bpo compare dies, even by SIGKILL, so no
    run goes on alone holding its folder's lock (a rerun would be refused as 'in use')."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_child(cmd: list[str], log) -> int:
    """One run of the grid in its own process; SIGTERM and SIGINT sent to bpo compare reach it too."""
    linux = sys.platform.startswith("linux")
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ},
        start_new_session=True,  # a terminal's Ctrl-C reaches it once, through bpo compare
        preexec_fn=_die_with_parent if linux else None,
    )

    def forward(signum, _frame) -> None:
        proc.send_signal(signum)

    caught = (signal.SIGTERM, signal.SIGINT)
    try:
        before = {sig: signal.signal(sig, forward) for sig in caught}
    except ValueError:  # not the main thread: signals stay as they are
        before = {}
    try:
        return proc.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def run_grid(
    config: str,
    overrides: list[str],
    methods: list[str],
    seeds: list[int],
    out: Path,
    log=print,
    claims: str = "",
    finished=None,
) -> list[Path]:
    """Run what is not finished; ``finished()`` is called after each run that ends well (publishing there keeps
    a long grid's results if it is stopped before its last run)."""
    parse_claims(claims, methods)  # a typo is said before the first run, not after the last
    base = load_config(config, overrides)
    base.check_sources()  # every run would meet a missing file: say so before the first starts
    if ANNOTATOR_KINDS.get(base.annotator.kind).deferred:
        raise ValueError(
            f"bpo compare runs its grid unattended; annotator.kind={base.annotator.kind} stops at every phase for "
            "people: run each method with bpo train and label it with bpo label"
        )
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for seed in seeds:  # seed-major: an interrupted grid still has whole seeds for every method
        for method in methods:
            folder = out / method / f"seed{seed}"
            folders.append(folder)
            if (folder / "eval.json").exists():
                log(f"{method} seed {seed}: done, skipped")
                continue
            run_one(config, overrides, method, seed, out, base.train.steps, log)
            if finished:
                finished()
    return folders


def train_args(config: str, overrides: list[str], method: str, seed: int, out: Path, steps: int) -> list[str]:
    """``bpo train``'s arguments for one run of the grid. Runs share one SFT cache per SFT setting: ``out/sft``
    for the grid's own, ``out/sft-<key>`` for a method that changes it (K = 1 or 5 members, say)."""
    quarter = str(max(1, steps // 4))
    extra = [o.replace("{T/4}", quarter).replace("{T}", str(steps)) for o in METHODS[method][1]]
    key = sft_key(load_config(config, [*overrides, *extra]))
    sft = out / "sft" if key == sft_key(load_config(config, overrides)) else out / f"sft-{key}"
    folder = out / method / f"seed{seed}"
    return [
        config,
        *overrides,
        *extra,
        f"train.seed={seed}",
        f"output_dir={folder}",
        f"sft_dir={sft}",
        "train.log_kl_sft=true",
    ]


def run_one(config: str, overrides: list[str], method: str, seed: int, out: Path, steps: int, log=print) -> None:
    """One run of the grid, ``bpo train`` in its own process, resumed from its checkpoint if it has one; an
    Interrupted or GridError line when it does not end well."""
    folder = out / method / f"seed{seed}"
    args = train_args(config, overrides, method, seed, out, steps)
    cmd = [sys.executable, "-m", "bpo.cli", "train"]
    cmd += ["--resume", str(folder), *args[1:]] if (folder / "checkpoints" / "latest").exists() else args
    log(f"{method} seed {seed}: running")
    with open(out / "compare.log", "a") as f:
        f.flush()
        offset = f.tell()
        code = run_child(cmd, f)
    if code in (-signal.SIGTERM, -signal.SIGINT, 130):
        raise Interrupted(
            f"{method} seed {seed} was stopped; rerun the same command to resume the grid (finished runs "
            "are skipped, this one continues from its last checkpoint)"
        )
    if code:  # say why here, not only in the log
        lines = (out / "compare.log").read_bytes()[offset:].decode(errors="replace").splitlines()
        cause = next((x for x in reversed(lines) if x.startswith("error:")), None)
        cause = cause or next((x for x in reversed(lines) if x.strip()), "no output")
        raise GridError(
            f"{method} seed {seed} failed (exit {code}): {cause.removeprefix('error: ')} "
            f"(its output: {out / 'compare.log'}; rerun the same command to resume the grid)"
        )
