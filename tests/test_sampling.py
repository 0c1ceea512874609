"""atarirep.sampling: AtariARI's draw of episodes with replacement, and every frame once."""

import numpy as np
import pytest

from atarirep import sampling
from atarirep.plumbing.errors import UserError


def test_draw_picks_episodes_uniformly_whatever_their_length_then_an_item_inside():
    bounds = np.array([0, 10, 1000, 1000, 1001])  # episodes of 10, 990, 0 and 1 items
    items = sampling.draw(np.random.default_rng(0), bounds, 30_000)
    episode = np.searchsorted(bounds, items, side="right") - 1
    share = np.bincount(episode, minlength=4) / len(items)
    assert share[2] == 0  # an episode without items is never chosen
    np.testing.assert_allclose(share[[0, 1, 3]], 1 / 3, atol=0.015)
    assert set(items[episode == 0]) == set(range(10))  # every item of a short episode is reached
    assert np.array_equal(items, sampling.draw(np.random.default_rng(0), bounds, 30_000))


def test_every_frame_visits_each_item_once_and_reference_draws_one_per_item():
    bounds = np.array([0, 5, 105])
    once = sampling.epoch_order(np.random.default_rng(1), bounds, "every_frame")
    assert sorted(once) == list(range(105))
    drawn = sampling.epoch_order(np.random.default_rng(1), bounds, "reference")
    assert len(drawn) == 105 and len(set(drawn)) < 105
    assert np.array_equal(sampling.evaluation_rows(None, bounds, "every_frame", 64), np.arange(105))
    assert len(sampling.evaluation_rows(np.random.default_rng(2), bounds, "reference", 64)) == 64  # whole batches
    assert len(sampling.evaluation_rows(np.random.default_rng(2), bounds, "reference", 200)) == 105  # one short batch


def test_an_unknown_sampling_is_one_line():
    with pytest.raises(UserError) as err:
        sampling.check("uniform", "probe.sampling")
    assert str(err.value) == (
        "probe.sampling='uniform' is not offered; use one of reference, every_frame (reference: "
        "AtariARI's draw of episodes with replacement; every_frame: each frame once)"
    )
