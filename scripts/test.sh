#!/usr/bin/env bash
# Set up (if needed) and run the test suite offline. Extra arguments go to pytest.
# --fast leaves out the tests marked slow (the fault injections, the benchmarks, the long end-to-end runs):
# every module is still exercised; CI runs the full suite.
# The tests run in one pytest-xdist worker per core (BPO_TEST_WORKERS, default auto; 0: one process),
# each worker with one torch thread: on 2 cores two single-thread workers took 12.5 min where one
# process of two threads took 19 min (2026-12-07).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
fast=()
if [ "${1:-}" = "--fast" ]; then fast=(-m "not slow"); shift; fi
workers=${BPO_TEST_WORKERS:-auto}
if [ "$workers" != 0 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
exec .venv/bin/python -m pytest -q -n "$workers" "${fast[@]}" "$@"
