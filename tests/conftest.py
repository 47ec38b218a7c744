"""Shared test helpers."""
from __future__ import annotations

import pytest
import torch

from srrlab.data import load_dataset
from srrlab.train import train


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count (e.g. a study run with threads=1 in this process) must not
    change the numerics of the tests after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset, split seed 0 (loaded once per test session)."""
    return load_dataset("digits", seed=0)


def train_interrupted(cfg, run_dir, *, at_epoch: int, **kwargs):
    """Run ``train`` and interrupt it (KeyboardInterrupt) after epoch ``at_epoch``'s training steps,
    before its evaluation, leaving the run folder as a killed run would: checkpointed up to
    ``at_epoch - 1``, with epoch ``at_epoch``'s progress lost."""
    def crash(epoch):
        if epoch == at_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, on_epoch=crash, **kwargs)
