"""The probe baselines (atarirep.probe.baselines): majority and the end-to-end supervised encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atarirep import episodes, probe, scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- baselines -------------------------------------------------------------------------------------
def test_majority_baseline_breaks_a_tie_for_the_label_seen_first_as_the_reference():
    train = np.array([[1, 7], [2, 5], [2, 5], [3, 7]])  # modes: 2; 7 and 5 tie, 7 seen first
    test = np.array([[2, 5], [2, 7], [1, 7], [4, 7]])
    predictions = probe.majority_predictions(train, len(test))
    assert predictions.tolist() == [[2, 7]] * 4  # not 5, the smaller label
    table = scores.score(predictions, test, ["player_x", "score"])
    # player_x: class 2 has precision 2/4, recall 1 -> F1 2/3, weight 2/4; classes 1 and 4 score 0.
    # score: class 7 has precision 3/4, recall 1 -> F1 6/7, weight 3/4; class 5 scores 0.
    assert table["f1"].tolist() == pytest.approx([1 / 3, 9 / 14], abs=1e-12)
    assert table["accuracy"].tolist() == [0.5, 0.75]
    assert table["categories"].tolist() == [("agent_localization",), ("score_clock_lives_display",)]


def test_supervised_baseline_learns_a_position_end_to_end(tiny_encoder):
    rng = np.random.default_rng(0)
    position = rng.integers(0, 3, size=300)  # where a bright block is drawn
    frames = np.zeros((300, 1, 210, 160), np.uint8)
    for i, p in enumerate(position):
        frames[i, 0, 50:90, 20 + 50 * p : 60 + 50 * p] = 255
    labels = np.stack([10 * position, np.full(300, 7)], axis=1)
    model = probe.fit_supervised(
        tiny_encoder,
        frames[:200],
        labels[:200],
        frames[200:250],
        labels[200:250],
        per_variable=True,
        lr=1e-2,
        epochs=15,
        patience=5,
        seed=0,
    )
    assert len(model.models) == 2  # one encoder per variable
    predictions = probe.predict_supervised(model, frames[250:])
    assert np.array_equal(predictions, labels[250:])


class CountingFrames:
    """Frames that record how many rows each read asks for, and refuse to be read whole (no __array__)."""

    def __init__(self, frames: np.ndarray):
        self.frames, self.reads = frames, []

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        out = self.frames[index]
        self.reads.append(len(out))
        return out


def test_supervised_baseline_reads_frames_a_batch_at_a_time(breakout_dir, tiny_encoder):
    train = episodes.load_splits(breakout_dir)["train"]  # ~1,100 frames: 300 train, 300 val
    frames = {"train": np.asarray(train.frames[:300]), "val": np.asarray(train.frames[300:600])}
    labels = {"train": train.labels[:300, :2], "val": train.labels[300:600, :2]}
    settings = dict(per_variable=False, lr=1e-3, batch_size=64, epochs=2, patience=5, seed=0, sampling="every_frame")
    counted = {k: CountingFrames(v) for k, v in frames.items()}
    lazily = probe.fit_supervised(
        tiny_encoder, counted["train"], labels["train"], counted["val"], labels["val"], **settings
    )
    assert max(counted["train"].reads) == 64 and max(counted["val"].reads) == 256  # never the whole split
    assert sum(counted["train"].reads) == 1 + 2 * 300  # shape check + 2 epochs
    assert sum(counted["val"].reads) == 2 * 300  # one pass an epoch
    in_memory = probe.fit_supervised(
        tiny_encoder, frames["train"], labels["train"], frames["val"], labels["val"], **settings
    )
    for a, b in zip(lazily.models[0].state_dict().values(), in_memory.models[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same batches
