#!/usr/bin/env bash
# Installs solens and its test dependencies (torch from the pinned local wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[dev,data]"
