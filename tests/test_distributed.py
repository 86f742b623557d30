"""Two CPU processes (accelerate launch, gloo) against one process with the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import adapters, tiny_config

from bpo.train.ledger import AnnotationLog

TOLERANCE = 1e-4  # absolute, on LoRA weights of size ~0.1: float reduction order and padding differ


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate, "accelerate's launcher should be installed beside python"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    over = {"sft_dir": str(tmp_path / "sft"), "sft.seeds": "[0,1]", "train.steps": 6, "train.batch_size": 4}
    one = tiny_config(tmp_path / "one", **over)
    two = tiny_config(tmp_path / "two", **over)
    subprocess.run(
        [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *one], check=True, env=env, capture_output=True
    )
    # the shipped config: accelerate's torch.distributed launcher, 2 processes; device=cpu makes it gloo
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu-2-processes.yaml"
    res = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(config),
            "-m",
            "bpo.cli",
            "train",
            "--no-eval",
            *two,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    run_two = tmp_path / "two" / "run"
    assert (run_two / "annotations.rank0.jsonl").exists() and (run_two / "annotations.rank1.jsonl").exists()
    n1 = len(AnnotationLog(tmp_path / "one" / "run" / "annotations.jsonl").entries)
    n2 = sum(len(AnnotationLog(run_two / f"annotations.rank{r}.jsonl").entries) for r in (0, 1))
    assert n1 == n2  # keyed sampling: the same pairs, only split between processes
    want, got = adapters(tmp_path / "one" / "run" / "final"), adapters(run_two / "final")
    assert want.keys() == got.keys() and want
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    moved = max((want[k] - v).abs().max().item() for k, v in adapters(tmp_path / "sft").items() if k in want)
    assert worst < TOLERANCE, worst
    assert moved > 100 * TOLERANCE  # the runs trained: the match is not two untouched adapters
    assert torch.isfinite(torch.tensor(worst))


def test_a_sharding_launcher_is_refused_before_anything_loads(tmp_path, monkeypatch):
    # accelerate's FSDP cannot start on CPU here (it wants an accelerator device), so the launcher's
    # state is faked: bpo must refuse FSDP/DeepSpeed with one line, not run unsharded as if it were DDP
    from accelerate.utils import DistributedType
    from typer.testing import CliRunner

    import bpo.train.loop
    from bpo.cli import app

    class Sharded:
        def __init__(self, **kwargs):
            self.distributed_type = DistributedType.FSDP

    monkeypatch.setattr(bpo.train.loop, "Accelerator", Sharded)
    res = CliRunner().invoke(app, ["train", "quickstart", *tiny_config(tmp_path), "--no-eval"])
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: accelerate launched bpo with FSDP") and "ddp.yaml" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "sft").exists()


def test_other_processes_wait_until_the_folder_is_locked_and_cleaned(tmp_path, monkeypatch):
    # rank 0 removes a killed run's *.tmp leftovers at start; a rank writing its ledger at that moment
    # would lose its temp file (CI: "No such file ... annotations.rank1.jsonl.tmp"). The barrier must sit
    # between the cleaning and the first write to the folder.
    from accelerate.utils import DistributedType

    import bpo.train.loop
    from bpo.config import load_config

    order = []

    class Acc:
        def __init__(self, **kwargs):
            self.distributed_type, self.is_main_process, self.num_processes = DistributedType.NO, True, 2

        def wait_for_everyone(self):
            order.append("barrier")

    class Stop(Exception):
        pass

    def ledger(*args, **kwargs):
        order.append("ledger")
        raise Stop

    monkeypatch.setattr(bpo.train.loop, "Accelerator", Acc)
    monkeypatch.setattr(bpo.train.loop, "clean_leftovers", lambda out: order.append("clean"))
    monkeypatch.setattr(bpo.train.loop, "open_ledger", ledger)
    try:
        bpo.train.loop.train(load_config(None, tiny_config(tmp_path)), evaluate=False)
    except Stop:
        pass
    assert order == ["clean", "barrier", "ledger"]
