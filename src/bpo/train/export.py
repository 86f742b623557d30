"""Exporting a run's behavior model for the Hub: merged into the base weights, or as a PEFT adapter.

Both carry a model card that says what made them (base model, method, F, T, B, K, annotator) and
how they did (the run's win rates with their intervals), from the run folder itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bpo.config import resume_config
from bpo.errors import ConfigError
from bpo.eval.report import model_card
from bpo.io import check_target, replace_dir, temp_for
from bpo.train.checkpoint import check_final


def is_export(folder: Path, kind: str) -> bool:
    """A folder bpo export wrote: its model card says so, and names the library of ``kind``."""
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    library = "transformers" if kind == "merged" else "peft"
    return "aligned with bpo" in text and f"library_name: {library}" in text


def export(
    run: str | Path, merged: str | Path | None = None, adapter: str | Path | None = None, force: bool = False
) -> list[Path]:
    """Write the run's behavior model to ``merged`` (a plain transformers folder) and/or ``adapter``.

    A target that exists, is not empty and is not a bpo export of the same kind is refused unless
    ``force``; a target inside the run (or holding it) is refused always. The old folder is replaced
    only once the new one is complete.
    """
    run = Path(run)
    behavior = run / "final" / "behavior"
    if not merged and not adapter:
        raise ConfigError("bpo export needs --merged DIR and/or --adapter DIR")
    targets = {}
    for kind, target in (("adapter", adapter), ("merged", merged)):
        if target:
            what = f"a bpo export ({kind})"
            targets[kind] = check_target(Path(target), what, lambda f, k=kind: is_export(f, k), force, reading=run)
    if not (behavior / "adapter_config.json").exists():
        raise ConfigError(f"{run} has no final/behavior adapter: export a finished run (bpo train --resume {run})")
    check_final(run)  # a damaged final/behavior is not exported
    cfg = resume_config(run)
    written = []
    if "adapter" in targets:
        tmp = temp_for(targets["adapter"])
        shutil.copytree(behavior, tmp, dirs_exist_ok=True)
        (tmp / "README.md").write_text(model_card(run, "adapter"))
        replace_dir(tmp, targets["adapter"])
        written.append(Path(adapter))
    if "merged" in targets:
        from peft import PeftModel

        from bpo.model.policy import load_policy

        policy = load_policy(cfg.model.name, "cpu", cfg.model.dtype, cfg.model.chat_template)
        model = PeftModel.from_pretrained(policy.model, str(behavior)).merge_and_unload()
        tmp = temp_for(targets["merged"])
        model.save_pretrained(tmp, safe_serialization=True)
        policy.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run, "merged"))
        replace_dir(tmp, targets["merged"])
        written.append(Path(merged))
    return written
