"""Pixel-prediction baseline: encode frame t, decode frame t+1."""

from __future__ import annotations

import torch
from torch import nn

from atarirep import encoders
from atarirep.methods.base import Method
from atarirep.methods.batch import Batch


class PixelPrediction(Method):
    """Next-frame pixel prediction through the benchmark encoder's features (Anand et al. 2019, sec. 5)."""

    window = 2
    uses_negatives = False
    is_trainable = True

    def __init__(self, feature_size: int = 256):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.predictor = nn.Linear(feature_size, feature_size)  # AtariARI's NaFFPredictor.fc_layers, no activation
        self.decoder = encoders.BenchmarkDecoder(feature_size)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = mean over pixels and batch of (sigmoid(dec(W f(x_t) + b)) - x_{t+1})^2, AtariARI's nn.MSELoss().

        W, b: a linear layer between the encoder and the decoder, as AtariARI's NaFFPredictor has.

        Each sample's loss depends on that sample only, so a data-parallel run's averaged gradient
        equals the one-process gradient on the whole batch.
        """
        x_t, x_next = batch.frames[:, 0], batch.frames[:, 1]  # (B, 1, 210, 160) each
        features = self.predictor(self.encoder(x_t))  # (B, 256)
        prediction = torch.sigmoid(self.decoder(features).float())  # (B, 1, 210, 160)
        # The mean over pixels, as the reference: Adam divides out a constant scale but its eps (1e-5) does not.
        loss = (prediction - x_next).pow(2).mean()
        return loss, {"mse_per_pixel": loss.detach()}
