"""Shared by the methods' tests: real Breakout frames (the session's pretraining collection) and batches of them."""

import numpy as np
import pytest
import torch

from atarirep import encoders, episodes, pretraining
from atarirep.methods import Batch


@pytest.fixture(scope="module")
def train_split(breakout_pretrain_dir):
    return episodes.load_splits(breakout_pretrain_dir)["train"]


def real_batch(split, method, batch_size, seed=0) -> Batch:
    """A Batch of real frames for `method`, drawn as the training loop draws them."""
    rng = np.random.default_rng(seed)
    found = pretraining.windows(split, method.window)
    samples = rng.choice(len(found), batch_size, replace=False)
    rows = found.rows(samples)  # (B, W)
    frames = encoders.preprocess(torch.from_numpy(split.frames[rows.reshape(-1)]))
    negatives = None
    if method.uses_negatives:
        negative_rows = found.episode_start[samples] + rng.integers(0, found.episode_length[samples])
        negatives = encoders.preprocess(torch.from_numpy(split.frames[negative_rows]))
    return Batch(frames.view(*rows.shape, 1, 210, 160), negatives, torch.Generator().manual_seed(seed))
