"""Test-wide settings: never touch the network, keep CPU threads modest."""

from __future__ import annotations

import os

# must be set before huggingface_hub is imported anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
