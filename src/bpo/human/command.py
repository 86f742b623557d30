"""``bpo label RUN``: serve the label page, export or import labels, or print progress and agreement."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text

from bpo.config import resume_config
from bpo.errors import ConfigError
from bpo.human.labels import LabelStore


def label_run(
    run: Path,
    host: str,
    port: int,
    export_to: Path | None,
    import_from: Path | None,
    labeller: str,
    summary: bool,
    console: Console,
) -> None:
    cfg = resume_config(run)
    if cfg.annotator.kind != "human":
        raise ConfigError(f"{run} is judged by annotator.kind={cfg.annotator.kind}; only human runs have labels")
    if not (run / "labels").is_dir():
        raise ConfigError(f"{run} has no pairs waiting yet: start it with bpo train (it stops at the first phase)")
    overlap, phases = cfg.annotator.overlap, cfg.train.phases
    if export_to or import_from:
        from bpo.human.files import export, import_labels
        from bpo.io import FolderLock

        with FolderLock(run / "labels", what="label queue"):
            store = LabelStore(run, overlap)
            if export_to:
                console.print(f"wrote {', '.join(map(str, export(store, export_to)))}")
            if import_from:
                n = import_labels(store, import_from, labeller)
                console.print(f"imported {n} labels from {import_from}")
    elif not summary:
        from bpo.human.server import serve

        serve(run, overlap, phases, host, port, say=lambda m: console.print(Text(m), soft_wrap=True))
        return
    store = LabelStore(run, overlap)
    for phase in store.queue.phases():
        p = store.progress(phase)
        console.print(f"phase {phase + 1} of {phases}: {p['labelled']} of {p['pairs']} pairs labelled")
    for r in store.agreement():
        k = "n/a" if r["kappa"] is None else f"{r['kappa']:.2f}"
        console.print(f"{' / '.join(r['raters'])}: {r['pairs']} pairs, agreement {r['agreement']:.0%}, kappa {k}")
