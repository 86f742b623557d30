#!/usr/bin/env bash
# Wheels of what bpo imports that the GPU machine lacks (it has torch, transformers, peft, accelerate,
# safetensors, numpy, pyyaml; ../shared/gpu/README.md), for Python 3.12 on x86_64, into .gpu/wheels
# (ignored by git). Carry that folder with scripts/gpu-check.sh: it installs them to /tmp/site.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh >/dev/null
mkdir -p .gpu/wheels
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .gpu/wheels \
  typer click shellingham rich markdown-it-py mdurl pygments tensorboard tensorboard-data-server protobuf \
  absl-py markdown werkzeug matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six \
  pillow
du -sh .gpu/wheels
