"""Where ``scripts/engine.sh`` put llama.cpp's server and converter (read by the config check: no torch here)."""

from __future__ import annotations

from pathlib import Path

from bpo.errors import ConfigError
from bpo.io import cache_dir


def engine_dir(folder: str = "") -> Path:
    """The folder scripts/engine.sh built: ``engine.dir``, else the newest in ``$BPO_CACHE/engine``."""
    if folder:
        found = Path(folder)
    else:
        root = cache_dir() / "engine"
        built = sorted(root.glob("llama.cpp-*/llama-server"), key=lambda p: p.stat().st_mtime)
        found = built[-1].parent if built else root
    if not (found / "llama-server").exists() or not (found / "convert_hf_to_gguf.py").exists():
        raise ConfigError(
            f"engine.dir: no llama-server and converter in {found}; build them with `bash scripts/engine.sh` "
            "(about 6 minutes) or set engine.dir=FOLDER"
        )
    return found
