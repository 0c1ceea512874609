"""CPC (atarirep.methods.cpc): its offsets, its scores and its GRU."""

import math

import pytest
import torch
from torch.nn import functional as F

from atarirep import methods
from atarirep.methods import Batch
from atarirep.plumbing.errors import UserError


def test_cpc_offsets_must_fit_inside_the_sequence():
    with pytest.raises(UserError) as err:
        methods.make("cpc", sequence_length=4, offsets=(1, 4))
    assert str(err.value) == (
        "cpc offsets [1, 4] must be between 1 and sequence_length - 1 = 3; lower the offsets or raise sequence_length"
    )


class _IndexEncoder(torch.nn.Module):
    """A frame whose first pixel holds i -> the one-hot vector e_i (so z_{b,t} are orthonormal)."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return F.one_hot(x.flatten(1)[:, 0].long(), self.size).float()


class _ScaledIdentityGRU(torch.nn.Module):
    """c_t = scale * z_t (a GRU stand-in, so the context at t is known)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, latents):
        return self.scale * latents, None


def test_cpc_scores_the_prediction_at_t_for_offset_k_against_frame_t_plus_k():
    b, length, s = 2, 5, 2.0
    method = methods.make("cpc", feature_size=b * length, sequence_length=length, offsets=(1, 2))
    method.encoder, method.gru = _IndexEncoder(b * length), _ScaledIdentityGRU(s)
    index = torch.arange(b * length).view(b, length)  # sample i, step t -> one-hot e_{i*L+t}
    with torch.no_grad():
        for k, predictor in zip(method.offsets, method.predictors, strict=True):
            shift = torch.zeros(b * length, b * length)  # W_k e_{i,t} = e_{i,t+k}
            for i in range(b):
                for t in range(length - k):
                    shift[index[i, t + k], index[i, t]] = 1.0
            predictor.weight.copy_(shift if k == 1 else -shift)  # offset 2 ranks its positive last
            predictor.bias.zero_()
    frames = index.float().view(b, length, 1, 1, 1)
    loss, metrics = method.loss(Batch(frames))
    # Row (i, t) of offset k scores s (or -s) on z_{i,t+k} and 0 on the N - 1 = B(L-k) - 1 other targets.
    n1, n2 = b * (length - 1), b * (length - 2)
    offset_1 = math.log(1 + (n1 - 1) * math.exp(-s))  # -log(e^s / (e^s + n1 - 1))
    offset_2 = math.log(math.exp(-s) + n2 - 1) + s  # -log(e^-s / (e^-s + n2 - 1))
    assert metrics["offset_1"].item() == pytest.approx(offset_1, rel=1e-6)
    assert metrics["offset_2"].item() == pytest.approx(offset_2, rel=1e-6)
    assert loss.item() == pytest.approx(offset_1 + offset_2, rel=1e-6)  # summed, as AtariARI's CPCTrainer
    method.offset_reduction = "mean"
    assert method.loss(Batch(frames))[0].item() == pytest.approx((offset_1 + offset_2) / 2, rel=1e-6)
    assert method.early_stop_metric == "accuracy" and method.adam_eps == 1e-8
    assert metrics["accuracy"].item() == pytest.approx((1.0 + 0.0) / 2)  # every positive first at k=1, none at k=2


def test_cpc_gru_has_the_reference_two_layers_unless_told():
    assert methods.make("cpc", sequence_length=4, offsets=(1,)).gru.num_layers == 2
    assert methods.make("cpc", sequence_length=4, offsets=(1,), gru_layers=1).gru.num_layers == 1
    with pytest.raises(UserError, match=r"cpc gru_layers=0 must be at least 1"):
        methods.make("cpc", sequence_length=4, offsets=(1,), gru_layers=0)
