"""The run: everything the loop works on, built once by :func:`setup` (policy, members, judges, prompts).

The loop (:mod:`bpo.train.loop`) and its pieces (phases, step, checkpoint) take a :class:`Run`;
none of them imports the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator

from bpo.annotators import Annotator, LLMJudgeAnnotator, build_annotator, build_gold, judge_notes
from bpo.annotators.reward_model import independent_judges
from bpo.config import Config
from bpo.data import PromptRecord, load_source
from bpo.errors import ConfigError
from bpo.model.ensemble import Ensemble
from bpo.model.policy import Policy, load_policy
from bpo.progress import Bars, Lines
from bpo.registry import REFERENCES
from bpo.timing import Timer
from bpo.train.references import BEHAVIOR, SFT
from bpo.train.sft import member_paths, run_sft, sft_done


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
    gold: Annotator | None = None  # eval.gold: a judge apart from the annotator (None: the annotator judges)
    timer: Timer = field(default_factory=Timer)  # seconds per part of the loop, logged as time/<part>

    def __post_init__(self) -> None:
        self.index = {r.id: i for i, r in enumerate(self.prompts)}


def local_shard(records: list[PromptRecord], b: int, rank: int, world: int) -> list[PromptRecord]:
    """Step t uses global prompts [t*B, (t+1)*B); process r takes every world-th of them."""
    return [r for i, r in enumerate(records) if (i % b) % world == rank]


def setup(cfg: Config, progress: Bars | Lines, acc: Accelerator | None = None, evaluate: bool = True) -> Run:
    acc = acc or Accelerator(cpu=cfg.device == "cpu")
    t = cfg.train
    if t.batch_size % acc.num_processes:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by the {acc.num_processes} processes")
    out = Path(cfg.output_dir)
    say = progress.console.print if acc.is_main_process else (lambda *a, **k: None)
    loading = time.time()
    say(f"loading {cfg.model.name} on {acc.device} ...", highlight=False, markup=False)  # seconds, or a minute
    policy = load_policy(cfg.model.name, acc.device, cfg.model.dtype, cfg.model.chat_template)
    say(f"loaded {cfg.model.name} in {time.time() - loading:.0f} s", highlight=False, markup=False)
    needed = t.steps * t.batch_size
    records = load_source(cfg.data, "train", needed, policy.tokenizer)
    if len(records) < needed:
        raise ConfigError(
            f"data.train {cfg.data.train!r} has {len(records)} usable prompts; T*B = {t.steps}*{t.batch_size} "
            f"= {needed} are needed (each prompt is used once)"
        )
    records = records[:needed]
    # the judges load before SFT: a wrong reward-model path fails in seconds, not after member SFT
    annotator = build_annotator(cfg)
    gold = build_gold(cfg) if cfg.eval.gold and evaluate else None  # --no-eval: nothing to judge
    if isinstance(annotator, LLMJudgeAnnotator):  # every request it sends is counted in the run folder
        rank = "" if acc.num_processes == 1 else f".rank{acc.process_index}"  # one writer per file
        annotator.judge.journal = out / f"judge-requests{rank}.jsonl"
    evals = load_source(cfg.data, "eval", cfg.data.eval_examples, policy.tokenizer) if evaluate else []
    for note in judge_notes(annotator, gold) + independent_judges(cfg, [r.prompt for r in evals]):
        say(note, highlight=False, soft_wrap=True, markup=False)

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
    ens.merge(BEHAVIOR, t.merge)
    ens.snapshot(BEHAVIOR, SFT)
    REFERENCES.get(t.reference).start(ens, t)
    shard = local_shard(records, t.batch_size, acc.process_index, acc.num_processes)
    ids = [policy.encode_prompt(cfg.data.prompt_template.format(prompt=r.prompt)) for r in shard]
    return Run(cfg, acc, policy, ens, annotator, shard, ids, out, t.batch_size // acc.num_processes, gold)
