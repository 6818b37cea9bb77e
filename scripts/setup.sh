#!/usr/bin/env bash
# Installs solens and its test dependencies (torch from the pinned local wheels), and
# Debian's chromium for the atlas' browser test (Playwright for Python, from the dev extra,
# drives that binary; Playwright's own browser download is not used).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[dev,data]"  # dev includes playwright
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt_get="apt-get"
    elif command -v sudo >/dev/null 2>&1; then
        apt_get="sudo apt-get"
    else
        apt_get=""
    fi
    if [ -n "$apt_get" ] && $apt_get update -q && $apt_get install -y -q chromium; then
        :
    else
        echo "setup.sh: could not install Debian's chromium; the atlas browser test will be" \
             "skipped" >&2
    fi
fi
