"""Test-wide settings: never touch the network, keep CPU threads modest."""

from __future__ import annotations

import os

import pytest
import torch

# must be set before huggingface_hub is imported anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored after): tiny ops are dominated by thread
    synchronisation on a busy 2-core machine, and one thread is deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
