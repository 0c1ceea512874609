"""Pixel prediction (atarirep.methods.pixel_pred): the next frame as its target, through a linear decoder."""

import math

import pytest
import torch

from atarirep import methods, pretraining
from atarirep.methods import Batch
from tests.methods.conftest import real_batch


def test_pixel_prediction_target_is_the_next_frame_not_the_current_one():
    """Decoder output fixed at sigmoid(1): the loss is the squared distance of that to x_{t+1} = white."""
    method = methods.make("pixel_pred")
    with torch.no_grad():
        method.decoder.layers[-1].weight.zero_()
        method.decoder.layers[-1].bias.fill_(1.0)
    frames = torch.zeros(2, 2, 1, 210, 160)
    frames[:, 1] = 1.0  # x_t black, x_{t+1} white
    loss, _ = method.loss(Batch(frames))
    c = 1 / (1 + math.exp(-1))
    assert loss.item() == pytest.approx((1 - c) ** 2, rel=1e-5)  # the per-pixel mean; against x_t it would be c^2


def test_pixel_prediction_decodes_through_a_linear_layer_after_the_encoder(train_split):
    method = pretraining.build_method("pixel_pred", seed=0)
    assert isinstance(method.predictor, torch.nn.Linear) and method.predictor.weight.shape == (256, 256)
    batch = real_batch(train_split, method, batch_size=2)
    with torch.no_grad():
        method.predictor.bias.fill_(0.3)  # the loss must go through it
        loss, _ = method.loss(batch)
        prediction = torch.sigmoid(method.decoder(method.predictor(method.encoder(batch.frames[:, 0]))))
        expected = ((prediction - batch.frames[:, 1]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
