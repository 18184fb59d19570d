#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with grouplat and every extra.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[all]"
