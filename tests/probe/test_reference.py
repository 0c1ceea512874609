"""The AtariARI-style reference loop (atarirep.probe.reference) against the batched fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atarirep import episodes, probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reference_loop_re_encoding_frames_matches_the_fast_path(breakout_dir, tiny_encoder):
    data = episodes.load_splits(breakout_dir)
    torch.manual_seed(0)
    encoder = tiny_encoder()
    frames = {k: np.asarray(data[k].frames[:256]) for k in ("train", "val", "test")}
    labels = {k: data[k].labels[:256] for k in frames}
    settings = dict(lr=3e-3, batch_size=64, epochs=3, patience=15, seed=0)
    features = {k: probe.encode(encoder, frames[k]) for k in frames}
    fast = probe.fit_probes(features["train"], labels["train"], features["val"], labels["val"], **settings)
    slow = probe.fit_probes_reference(
        frames["train"], labels["train"], frames["val"], labels["val"], encoder=encoder, **settings
    )
    assert np.array_equal(
        probe.predict(fast, features["test"]), probe.predict_reference(slow, frames["test"], encoder=encoder)
    )
