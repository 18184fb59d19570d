#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with grouplat and every extra.
set -euo pipefail
cd "$(dirname "$0")"
# perf_analyzer (tritonclient's binary) links Debian's libb64; without it grouplat links pytriton's copy.
if [ "$(id -u)" = 0 ] && ! /sbin/ldconfig -p | grep -q 'libb64\.so\.0d'; then
  { apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; } ||
    echo "setup.sh: libb64-0d not installed; perf_analyzer will use pytriton's copy" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[all]"
