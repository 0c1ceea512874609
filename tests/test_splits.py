import math

import numpy as np

from atarirep import splits


def _hashes(*ids):
    """(len(ids), 16) uint8 frame hashes, one distinct row per id."""
    return np.array([[i] * 16 for i in ids], np.uint8)


def test_label_entropy_is_in_nats_per_column():
    labels = np.array([[0, 7, 0], [0, 7, 1], [1, 7, 2], [1, 7, 3]], np.uint8)
    assert np.allclose(splits.label_entropy(labels), [math.log(2), 0.0, math.log(4)], rtol=0, atol=1e-12)


def test_label_entropy_of_uneven_labels_matches_the_formula():
    labels = np.array([[5], [5], [5], [9]], np.uint8)  # p = 3/4, 1/4
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert abs(splits.label_entropy(labels)[0] - expected) < 1e-12


def test_a_variable_just_below_the_threshold_is_dropped_and_one_at_or_above_it_kept():
    # Binary labels over 1000 frames: 287 ones give 0.59944 nats, 288 give 0.60035.
    def column(num_ones):
        return np.r_[np.ones(num_ones), np.zeros(1000 - num_ones)].astype(np.uint8)

    labels = np.stack([column(287), column(288)], axis=1)
    entropies = splits.label_entropy(labels)
    assert entropies[0] < 0.6 < entropies[1]
    assert splits.variables_to_keep(("below", "above"), entropies, 0.6) == ["above"]
    assert splits.variables_to_keep(("at",), np.array([0.6]), 0.6) == ["at"]  # "below 0.6 is dropped"


def test_duplicate_test_frames_are_removed_and_lone_leftovers_dropped_and_counted():
    seen = splits.hash_set(_hashes(1, 2, 3))
    test_episodes = [
        _hashes(1, 10, 11, 2),  # 2 duplicates removed, 2 frames kept
        _hashes(1, 12, 3),  # 2 duplicates removed, 1 left: the episode is dropped, its lone frame too
        _hashes(2, 3),  # every frame a duplicate: dropped
        _hashes(13, 14),  # nothing removed
    ]
    keeps, num_removed, num_dropped = splits.dedupe_test_episodes(test_episodes, seen)
    assert [None if k is None else k.tolist() for k in keeps] == [[False, True, True, False], None, None, [True, True]]
    assert num_removed == 2 + 3 + 2 and num_dropped == 2  # 7 of the 11 test frames are gone


def test_hash_set_is_built_once_and_reused_across_test_episodes():
    """dedupe_test_episodes takes the set itself: one lookup table for every test episode."""
    seen = splits.hash_set(_hashes(4))
    assert seen == {bytes([4] * 16)}
    episodes = [_hashes(4, 5, 6)] * 3
    keeps, num_removed, num_dropped = splits.dedupe_test_episodes(episodes, seen)
    assert num_removed == 3 and num_dropped == 0 and all(k.tolist() == [False, True, True] for k in keeps)
