"""Checkpoints of a run: save, verify, load, fall back, and the metrics log they own.

A checkpoint is a folder ``checkpoints/step-NNNNNN`` with the adapters (PEFT format), the
optimizer/scheduler/RNG state and a ``manifest.json`` (size and SHA-256 of every file), written
to a temp folder, renamed, and only then pointed to by ``checkpoints/latest``. The manifest is
written last, so a folder without one is unfinished. Loading verifies the manifest and falls back
to the newest intact checkpoint, saying so; the ledger prefix the checkpoint saw is checked too,
so judgements that were paid for and trained on cannot silently change or vanish.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from bpo.config import Config
from bpo.errors import BpoError, ConfigError
from bpo.eval.report import model_card
from bpo.io import (
    TEMP_FILE,
    read_jsonl,
    remove_leftovers,
    replace_dir,
    saving,
    temp_dir,
    verify,
    write_jsonl,
    write_manifest,
    write_text_atomic,
)
from bpo.model.policy import base_model_path
from bpo.registry import REFERENCES
from bpo.train.ledger import AnnotationLog, check_prefix, digest, ledger_settings
from bpo.train.references import BEHAVIOR, SFT
from bpo.train.run import Run

KEEP = 2  # checkpoints kept: the newest and one to fall back to


class CheckpointError(BpoError, RuntimeError):
    """No checkpoint can be resumed from; the message says why and what to do."""


def frozen_adapters(reference: str) -> list[str]:
    """The frozen adapters a run keeps beside its members: the behavior and SFT models, and its reference rule's."""
    return [BEHAVIOR, SFT, *REFERENCES.get(reference).owns]


def ledger_files(out: Path) -> list[Path]:
    return sorted(out.glob("annotations*.jsonl"))


def save_checkpoint(run: Run, next_step: int, optimizers: dict, schedulers: dict) -> None:
    """Everything needed to continue at ``next_step``: temp folder, manifest, rename, pointer."""
    if run.acc.is_main_process:
        with saving(run.out / "checkpoints", f"continue with bpo train --resume {run.out}"):
            _save_checkpoint(run, next_step, optimizers, schedulers)
    run.acc.wait_for_everyone()


def _save_checkpoint(run: Run, next_step: int, optimizers: dict, schedulers: dict) -> None:
    """The main process's part: temp folder, adapters and state, manifest, rename, pointer."""
    root = run.out / "checkpoints"
    tmp = temp_dir(root, ".tmp-")
    names = run.ens.members + frozen_adapters(run.cfg.train.reference)
    run.ens.save(tmp / "adapters", names, base_model=base_model_path(run.cfg.model.name))
    torch.save(
        {
            "next_step": next_step,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "world_size": run.acc.num_processes,
            # every process has reached this step, so every ledger holds what training used
            "ledgers": {p.name: digest(p) for p in ledger_files(run.out)},
        },
        tmp / "trainer_state.pt",
    )
    write_manifest(tmp)  # last: a folder without a manifest is unfinished
    final = root / f"step-{next_step:06d}"
    replace_dir(tmp, final)
    write_text_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        remove_leftovers(root, [old.name])


def has_checkpoint(out: Path) -> bool:
    root = out / "checkpoints"
    return (root / "latest").exists() or any(root.glob("step-*"))


def find_checkpoint(out: Path, processes: int, say: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """The newest intact checkpoint and its trainer state (None: there is none yet).

    Runs before the model is loaded: a damaged newest checkpoint is skipped (and said so), a
    checkpoint whose ledger lines changed or vanished since it was written is refused.
    """
    root = out / "checkpoints"
    pointer = (root / "latest").read_text().strip() if (root / "latest").exists() else ""
    candidates = sorted(root.glob("step-*"), reverse=True)
    if pointer and root / pointer in candidates:
        candidates.remove(root / pointer)
        candidates.insert(0, root / pointer)
    if not candidates:
        return None
    skipped = []
    for folder in candidates:
        problem = verify(folder)
        state = None
        if problem is None:
            try:  # tensors, numbers, strings and containers only: a run folder may come from anyone
                state = torch.load(folder / "trainer_state.pt", weights_only=True)
            except pickle.UnpicklingError as err:
                known = "Weights only load failed" in str(err)
                problem = (
                    "trainer_state.pt holds more than tensors and numbers (not loaded: bpo never runs code from a "
                    "run folder)"
                    if known
                    else f"trainer_state.pt cannot be read ({type(err).__name__})"
                )
            except Exception as err:  # a truncated or garbled file: torch raises several types
                problem = f"trainer_state.pt cannot be read ({type(err).__name__})"
        if problem is None:
            break
        skipped.append(f"{folder.name}: {problem}")
    else:
        raise CheckpointError(
            f"no intact checkpoint in {root} ({'; '.join(skipped)}); start a new run in another output_dir"
        )
    if skipped:
        say(f"warning: skipped damaged checkpoint(s) ({'; '.join(skipped)}); resuming from {folder.name}")
    if state["world_size"] != processes:
        raise CheckpointError(
            f"{folder}: saved by {state['world_size']} processes; resume with the same number of processes"
        )
    for name, recorded in state.get("ledgers", {}).items():
        check_prefix(out / name, recorded, f"checkpoint {folder.name}")
    return folder, state


def restore(run: Run, found: tuple[Path, dict] | None, optimizers: dict, schedulers: dict) -> int:
    """Load a checkpoint found by :func:`find_checkpoint`; returns the step to continue at (0: none)."""
    if found is None:
        return 0
    folder, state = found
    run.ens.load_state(folder / "adapters", run.ens.members + frozen_adapters(run.cfg.train.reference))
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["next_step"]


def save_final(run: Run) -> None:
    """The trained ensemble in ``final/``: behavior (the merged model), sft (the start) and the members."""
    if run.acc.is_main_process:
        with saving(run.out / "final", f"rebuild it with bpo train --resume {run.out}"):
            _save_final(run)


def _save_final(run: Run) -> None:
    tmp = temp_dir(run.out, ".final-")
    run.ens.save(tmp, ["behavior", "sft", *run.ens.members], base_model=base_model_path(run.cfg.model.name))
    (tmp / "README.md").write_text(model_card(run.out, "final"))  # PEFT's is an empty template
    write_manifest(tmp)  # verified before the final model is evaluated, exported or loaded by --run
    replace_dir(tmp, run.out / "final")


def write_final_card(out: Path) -> None:
    """The final/ card again, with the evaluation's figures once there are some (manifest updated)."""
    write_text_atomic(out / "final" / "README.md", model_card(out, "final"))
    write_manifest(out / "final")


def check_final(run: Path) -> None:
    """A finished run's ``final/`` is what it saved: every file there with its size and hash."""
    problem = verify(run / "final")
    if problem is not None:
        raise CheckpointError(
            f"{run}/final is not as the run saved it ({problem}); rebuild it from the last checkpoint with "
            f"bpo train --resume {run}"
        )


def clean_leftovers(out: Path) -> list[Path]:
    """Temp folders a killed run left behind (its checkpoint or final save was cut short)."""
    mine = f"*{TEMP_FILE}"  # only bpo's own temp names: a user's *.tmp files stay
    return remove_leftovers(out / "checkpoints", [".tmp-*", mine]) + remove_leftovers(out, [".final-*", mine])


def trim_metrics(path: Path, step: int) -> None:
    """Keep the logged steps up to ``step`` (the checkpoint resumed from).

    Steps after the checkpoint are trained and logged again, so without this a resumed run's
    metrics.jsonl would repeat them; a line cut by the kill is dropped too.
    """
    if path.exists():
        write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= step])


def ledger_path(out: Path, acc: Accelerator) -> Path:
    return out / ("annotations.jsonl" if acc.num_processes == 1 else f"annotations.rank{acc.process_index}.jsonl")


def open_ledger(cfg: Config, acc: Accelerator, resume: bool, say) -> tuple[AnnotationLog, tuple | None]:
    """The ledger and the checkpoint to continue from, both checked before anything is loaded."""
    out = Path(cfg.output_dir)
    log = AnnotationLog(ledger_path(out, acc))  # first its lines: a duplicated or deleted one is named as such
    found = find_checkpoint(out, acc.num_processes, say) if resume else None  # then the prefix the checkpoint saw
    log.bind(ledger_settings(cfg, acc.num_processes), resume=resume)  # then the settings (a new ledger's header)
    return log, found


def final_adapter(run: Path, adapter: str | None, model: str) -> str:
    """The adapter ``--run RUN`` means: ``adapter``, else the run's final behavior adapter, checked to be as the
    run saved it and made for ``model``."""
    from bpo.model.policy import check_adapter

    adapter = adapter or str(run / "final" / "behavior")
    if not (Path(adapter) / "adapter_config.json").exists():
        raise ConfigError(
            f"{adapter} does not exist: run {run} has not finished; finish it with `bpo train --resume {run}` "
            f"or pass --adapter RUN/checkpoints/<step>/adapters/behavior"
        )
    if Path(adapter).resolve() == (run / "final" / "behavior").resolve():
        check_final(run)  # the adapter evaluated is the one the run saved
    check_adapter(adapter, model)
    return adapter
