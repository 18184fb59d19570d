#!/usr/bin/env bash
# Make tritonclient 2.51.0's perf_analyzer runnable here (no GPU needed): Debian's libb64-0d and
# PyPI's CUDA runtime, then check that the binary starts. `grouplat perf-analyzer` sets LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! /sbin/ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libb64-0d
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq libb64-0d
  fi
fi
.venv/bin/pip install -q "nvidia-cuda-runtime-cu12>=12,<13"
.venv/bin/python -m grouplat.tools.perf_analyzer perf-analyzer --version
