"""The ``bpo`` command line: sft, train, label, generate, annotate, eval, compare, rm, report, export, config, info.

Every command takes an optional config (a YAML path or a preset name) followed by
``section.key=value`` overrides, e.g. ``bpo train tldr-local train.phases=2 train.loss=ipo``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.text import Text

from bpo.config import PRESETS, Config, load_config
from bpo.errors import AwaitingLabels, BpoError, ConfigError, Interrupted
from bpo.progress import LogConsole, warning_lines

HELP = """Online preference alignment with BPO (arXiv 2406.12168).

Commands: train, label, sft, generate, annotate, eval, compare, rm, report, export, config, info. Each takes an
optional config (a YAML file or a preset: {presets}) and section.key=value overrides, e.g.
bpo train tldr-local train.phases=2 train.loss=ipo; bpo config keys lists every key.
""".format(presets=", ".join(PRESETS))
START = """Start here:
  bpo train                     align SmolLM2-135M on the embedded task (the quickstart, ~7 min on 2 CPU cores)
  bpo train CONFIG key=value    your own run; bpo config show CONFIG prints every setting with its help"""
# rich markup off: help texts hold [CONFIG] [section.key=value ...], which rich would read as markup tags
app = typer.Typer(add_completion=False, rich_markup_mode=None, help=HELP, epilog="\b\n" + START)
console = LogConsole(stderr=True)
warning_lines(console)


def _config(args: list[str] | None) -> Config:
    args = list(args or [])
    path = args.pop(0) if args and "=" not in args[0] else "quickstart"
    return load_config(path, args)


def _run_config(
    run: Path | None, args: list[str] | None, adapter: str | None, need_adapter: bool = True
) -> tuple[Config, str | None]:
    """``--run RUN``'s own config.yaml (plus overrides) and final behavior adapter; else ``args`` and ``--adapter``."""
    from bpo.config import resume_config
    from bpo.train.checkpoint import final_adapter

    if run is None:
        return _config(args), adapter
    args = list(args or [])
    if args and "=" not in args[0]:
        raise ConfigError(f"--run {run} brings its own config; {args[0]!r} is not a section.key=value override")
    cfg = resume_config(run, args)
    if not need_adapter:
        return cfg, None
    return cfg, final_adapter(run, adapter, cfg.model.name)


def _fail(err: Exception) -> None:
    """One line, ``error: <what, where, how to fix>``, exit 2: never wrapped, never read as markup."""
    console.print(Text.assemble(("error:", "red"), " " + " ".join(str(err).split())), soft_wrap=True)
    raise typer.Exit(2)


def user_errors(command: Callable) -> Callable:
    """Run a command so that every error a user can fix is one ``error:`` line and exit 2.

    ``BpoError`` is bpo's own; ``ValueError`` and ``OSError`` come from the libraries underneath
    (a bad path, a malformed file). Ctrl-C says how to continue and exits 130.
    """

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Interrupted as err:
            console.print(Text(str(err)), soft_wrap=True)
            raise typer.Exit(130) from None
        except (BpoError, ValueError, OSError) as err:
            _fail(err)

    return run


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """Plain ``bpo`` shows the help and where to start; it starts nothing."""
    # our own progress replaces the Hub's bars: read when transformers is imported (after a config error)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())  # its epilog says where to start


@app.command(context_settings={"allow_extra_args": True})
@user_errors
def train(
    args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...]"),
    resume: str = typer.Option(None, help="continue the run in this folder from its last checkpoint"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the final evaluation"),
) -> None:
    """Member SFT (cached), BPO training and a final evaluation."""
    from bpo.config import resume_config

    cfg = resume_config(resume, list(args or [])) if resume else _config(args)  # before torch is imported
    from bpo.train.loop import train as run_train

    try:
        run_train(cfg, resume=bool(resume), console=console, evaluate=not no_eval)
    except AwaitingLabels as wait:  # annotator.kind=human: not a fault, the run goes on once people label
        console.print(Text(f"status: waiting for labels; {wait}"), soft_wrap=True)


@app.command()
@user_errors
def sft(args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...]")) -> None:
    """Train the K member SFT adapters only (they are cached for `bpo train`)."""
    from bpo.data import load_source
    from bpo.model.policy import load_policy
    from bpo.progress import progress_bar
    from bpo.train.sft import run_sft

    cfg = _config(args)
    cfg.check_sources(("sft",), task_judge=False)
    policy = load_policy(cfg.model.name, cfg.device or None, cfg.model.dtype, cfg.model.chat_template)
    records = load_source(cfg.data, "sft", cfg.data.sft_examples, policy.tokenizer)
    with progress_bar(console) as progress:
        paths = run_sft(cfg, policy, records, progress)
    console.print("SFT adapters: " + ", ".join(str(p) for p in paths))


@app.command()
@user_errors
def generate(
    prompts: Path = typer.Option(..., help="jsonl/csv of prompts (data.prompt_field)"),
    out: Path = typer.Option(..., help="where to write one JSON line per prompt"),
    adapter: str = typer.Option(None, help="a PEFT adapter folder (e.g. RUN/final/behavior); none: the base model"),
    n: int = typer.Option(1, help="responses per prompt"),
    sample: bool = typer.Option(False, help="sample (temperature/top-k from the config) instead of greedy"),
    run: Path = typer.Option(None, help="a run folder: its config, model and final behavior adapter"),
    args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...]"),
) -> None:
    """Responses of the base model or an adapter to a file of prompts."""
    from bpo.model.sampling import generate_file

    cfg, adapter = _run_config(run, args, adapter)
    console.print(f"wrote {generate_file(cfg, prompts, out, adapter, n, sample)} rows to {out}")


@app.command()
@user_errors
def annotate(
    pairs: Path = typer.Option(..., help="pairs: TRL prompt/chosen/rejected or HH-RLHF jsonl, or the TL;DR judged csv"),
    out: Path = typer.Option(..., help="where to write the judgements (jsonl)"),
    args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...]"),
) -> None:
    """Judge a file of response pairs with the configured annotator (reward model, callable, pairwise, LLM judge)."""
    from bpo.annotators.base import judge_file

    cfg = _config(args)
    n, first = judge_file(cfg, pairs, out, say=lambda note: console.print(note, soft_wrap=True, markup=False))
    console.print(f"wrote {n} judgements to {out}; the first response preferred in {first:.1%}")


@app.command(name="eval")
@user_errors
def eval_(
    args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...] (data.eval names the prompts)"),
    out: Path = typer.Option(..., help="folder for eval.json and items.jsonl"),
    adapter: str = typer.Option(None, help="PEFT adapter to evaluate (e.g. RUN/final/behavior)"),
    responses: str = typer.Option(
        None,
        help="instead of --adapter: responses to the eval prompts: JSONL {id, response} per line (matched by id; "
        "without ids by position), a .json array, or plain text, one response per line",
    ),
    against: str = typer.Option("reference", help="reference | base | ADAPTER_DIR | RESPONSES_FILE"),
    judge: str = typer.Option(
        "task", help="task (eval.gold, else the config's annotator, as scorer) | http (pairwise LLM)"
    ),
    judge_url: str = typer.Option(None, help="sets judge.url: the OpenAI-compatible base URL"),
    judge_model: str = typer.Option(None, help="sets judge.model: the model name the server serves"),
    api_key_env: str = typer.Option(None, help="sets judge.api_key_env: the variable holding the API key"),
    run: Path = typer.Option(None, help="a run folder: its config (model, data, judge) and final behavior adapter"),
) -> None:
    """Win rate (95% bootstrap interval, ties apart) of an adapter or a responses file."""
    from bpo.eval.systems import run_eval

    flags = {"url": judge_url, "model": judge_model, "api_key_env": api_key_env}  # overrides of the judge section
    over = [f"judge.{k}={v}" for k, v in flags.items() if v is not None]
    cfg, adapter = _run_config(run, [*(args or []), *over], adapter, need_adapter=not responses)
    r = run_eval(cfg, out, adapter, responses, against, judge)
    console.print(
        f"win rate vs {against}: {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
        f"({r['wins']} wins, {r['ties']} ties, {r['losses']} losses, n={r['n']}; ties as half "
        f"{r['win_rate_ties_half']:.3f}; judge {r['judge']})"
    )
    if r["invalid"]:
        console.print(f"warning: {r['invalid']} items left out: the judge's answer named neither response")
    for note in r.get("notes", []) + r.get("warnings", []):
        console.print(note, soft_wrap=True, markup=False)


@app.command()
@user_errors
def compare(
    args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...] shared by every run"),
    out: Path = typer.Option(Path("runs/compare"), help="folder of the grid: OUT/<method>/seed<k>"),
    methods: str = typer.Option("offline-dpo,online-dpo-sft,bpo-f2,bpo-fT", help="comma-separated"),
    seeds: str = typer.Option("0,1,2", help="comma-separated train.seed values"),
    report_only: bool = typer.Option(False, "--report-only", help="only rebuild report.md from finished runs"),
    publish: Path = typer.Option(None, help="also copy the runs' raw files here, with a report they rebuild"),
    claims: str = typer.Option("", help="METHOD>BASELINE,...: said holds / does not hold / not settled"),
    list_methods: bool = typer.Option(False, "--list", help="print the methods (each a preset of overrides) and stop"),
) -> None:
    """Methods x seeds at equal annotation budget; writes OUT/report.md and plots. Resumable."""
    from bpo.eval.compare import method_table, run_grid

    if list_methods:
        console.print("\n".join(method_table()), highlight=False, markup=False)
        return
    from bpo.eval.grid_report import report
    from bpo.eval.publish import grid_command, publish_grid

    config, *args = args if args and "=" not in args[0] else ["quickstart", *(args or [])]
    listed = f"--out {out} --methods {methods} --seeds {seeds}" + (f" --claims '{claims}'" if claims else "")
    ran = " ".join(["bpo compare", config, *args, listed])  # the command that runs the grid
    command = ran.replace(f" {listed}", f" --report-only {listed}") if report_only else ran
    seed_list, method_list = [int(s) for s in seeds.split(",")], methods.split(",")
    published = functools.partial(publish_grid, out, publish, config, seed_list, method_list, ran, claims)
    if not report_only:  # published after every finished run too: a stopped grid keeps what it ran
        run_grid(config, args, method_list, seed_list, out, console.print, claims, published if publish else None)
    stored = grid_command(out) if report_only else None  # a published grid: the page names what ran it
    rebuilt = report(out, stored or command, seed_list, method_list, command if stored else "", claims)
    console.print(f"report: {rebuilt}")
    if publish:
        console.print(f"published: {published()}")


@app.command()
@user_errors
def rm(
    data: Path = typer.Argument(..., help="pairs: TRL or HH-RLHF jsonl (prompt/chosen/rejected), TL;DR judged csv"),
    out: Path = typer.Option(..., help="folder to save the reward model in (loadable by annotator.model=OUT)"),
    model: str = typer.Option("smollm2-135m-instruct", help="backbone: Hub name, folder or built-in offline name"),
    part: str = typer.Option("1/1", help="I/N: part I of N parts with no prompt in common (proxy 1/2, gold 2/2)"),
    holdout: float = typer.Option(0.2, help="fraction of the part held out for the accuracy"),
    lora_r: int = typer.Option(16, help="LoRA rank (0: full fine-tuning)"),
    top_layers: int = typer.Option(0, help="LoRA on the top N blocks only (0: all); several times faster on a CPU"),
    epochs: int = typer.Option(1, help="passes over the training pairs"),
    lr: float = typer.Option(1e-4, help="AdamW learning rate (linear decay, 10% warm-up)"),
    batch_size: int = typer.Option(8, help="pairs per step"),
    max_length: int = typer.Option(512, help="tokens per (prompt, response); the prompt's start is cut beyond"),
    dialogue: str = typer.Option("keep", help="keep, or plain: HH turns as the BPO splits' 'user: ... assistant: '"),
    exclude: list[Path] = typer.Option(
        None, help="prompt file (jsonl/csv, field 'prompt'): leave out pairs on its prompts, e.g. the eval prompts"
    ),
    seed: int = typer.Option(0, help="initialisation and training order: give the gold another than the proxy"),
    split_seed: int = typer.Option(0, help="the permutation of prompts dealt into parts: the same for every part"),
    device: str = typer.Option("", help="cpu, cuda ... (empty: cuda when available)"),
    force: bool = typer.Option(False, "--force", help="replace --out even if it is not a reward model bpo wrote"),
    measure_only: bool = typer.Option(
        False, "--measure-only", help="measure the model saved in --out again on its held-out pairs; no training"
    ),
) -> None:
    """Train a Bradley-Terry reward model on human pairs; prints and saves its held-out accuracy (OUT/rm.json)."""
    from bpo.progress import progress_bar
    from bpo.train.rm import RMSettings, check_out, excluded_prompts, measure_saved, read_pairs, train_rm
    from bpo.train.rm_measure import summary

    settings = RMSettings(
        model, part, holdout, lora_r, top_layers, epochs, lr, batch_size, max_length, dialogue, seed, split_seed, device
    )
    settings.check()
    check_out(out, force, measure_only)  # before any work
    pairs = read_pairs(data, dialogue)
    skip = excluded_prompts(exclude or [], pairs, dialogue)
    with progress_bar(console) as progress:
        if measure_only:
            result = measure_saved(pairs, settings, out, skip, progress)
        else:
            result = train_rm(pairs, settings, out, str(data), progress, force, skip, console.print)
    for line in summary(out, result):
        console.print(line, soft_wrap=True, markup=False)


config_app = typer.Typer(help="Inspect configs: the resolved values and every key's help.", add_completion=False)
app.add_typer(config_app, name="config")


@config_app.command("show", context_settings={"allow_extra_args": True})
@user_errors
def config_show(args: list[str] = typer.Argument(None, help="[CONFIG] [section.key=value ...]")) -> None:
    """The resolved config as YAML with each field's help (it loads back as a config file)."""
    from bpo.fields import show

    print(show(_config(args)), end="")


@config_app.command("keys")
@user_errors
def config_keys_cmd() -> None:
    """Every section.key an override can set, with its default and help."""
    from bpo.config import Config
    from bpo.fields import keys

    print("\n".join(keys(Config())))


@config_app.command("kinds")
@user_errors
def config_kinds_cmd() -> None:
    """Every registered part (built in, and from installed plugins): annotators, tasks, backends, losses, references."""
    from bpo.config import registered_parts

    print("\n".join(registered_parts()))


@app.command()
@user_errors
def report(
    runs: list[Path] = typer.Argument(..., help="run folders (RUN holds config.yaml and metrics.jsonl)"),
    out: Path = typer.Option(None, help="where report.md and curves.png go (default: the run itself, for one run)"),
) -> None:
    """A run's report (report.md + curves.png), or several runs overlaid. Every run writes its own at the end."""
    from bpo.eval.report import ReportError, write_report

    if out is None and len(runs) > 1:
        raise ReportError(f"{len(runs)} runs overlaid need --out DIR (one run's report goes into the run)")
    command = " ".join(["bpo report", *map(str, runs), *([f"--out {out}"] if out else [])])
    console.print(f"report: {write_report(runs, out or runs[0], command)}")


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(..., help="a finished run folder"),
    merged: Path = typer.Option(None, help="write the behavior model merged into the base weights here"),
    adapter: Path = typer.Option(None, help="write the behavior model as a PEFT adapter here"),
    force: bool = typer.Option(False, "--force", help="replace a target folder that is not a bpo export"),
) -> None:
    """The run's behavior model for the Hub: merged (a plain transformers folder) or a PEFT adapter, with a card."""
    from bpo.train.export import export as run_export

    for path in run_export(run, merged, adapter, force):
        console.print(f"wrote {path}")


@app.command()
@user_errors
def label(
    run: Path = typer.Argument(..., help="a run with annotator.kind=human (its pairs wait in RUN/labels)"),
    host: str = typer.Option("127.0.0.1", help="address to serve on (the token in the URL guards the labels)"),
    port: int = typer.Option(8765, help="port to serve on"),
    export_to: Path = typer.Option(None, "--export", help="write the open pairs as JSONL (+ Label Studio tasks)"),
    import_from: Path = typer.Option(None, "--import", help="read labels: JSONL {id, choice} or a Label Studio export"),
    labeller: str = typer.Option("import", help="--import: the name recorded for rows that name nobody"),
    summary: bool = typer.Option(False, "--summary", help="print progress and agreement, serve nothing"),
) -> None:
    """Label a human-annotated run's pairs in the browser (keys 1/2/t/s/u), or export/import them."""
    from bpo.human.command import label_run

    label_run(run, host, port, export_to, import_from, labeller, summary, console)


@app.command()
def info() -> None:
    """Versions, device, offline models and presets."""
    import peft
    import torch
    import transformers

    from bpo import __version__
    from bpo.model.policy import offline_models

    console.print(
        f"bpo {__version__}  python {sys.version.split()[0]}  torch {torch.__version__}  "
        f"transformers {transformers.__version__}  peft {peft.__version__}"
    )
    device = "cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = [f"device: {device}", *offline_models(), "tiny-random-llama: built from a config (tests)"]
    console.print("\n".join([*lines, "presets: " + ", ".join(PRESETS)]))


if __name__ == "__main__":
    app()
