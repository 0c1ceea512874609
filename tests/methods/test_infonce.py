"""InfoNCE (atarirep.methods.infonce) on a hand-computed case."""

import math

import pytest
import torch

from atarirep.methods import info_nce


def test_info_nce_equals_a_hand_computed_2x2_case():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # logits [[1, 1], [0, 2]]: row 0 -log(e/(e+e)) = log 2; row 1 -log(e^2/(1+e^2))
    expected = (math.log(2) + math.log(1 + math.exp(2)) - 2) / 2
    assert info_nce(queries, keys).item() == pytest.approx(expected, rel=1e-6)
