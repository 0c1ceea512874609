"""The batch every pretraining method's `loss` receives; the training loop builds it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """Frames of B samples, each `window` consecutive steps of ONE episode (never across a boundary).

    frames     (B, W, C, 210, 160) float in [0, 1]; frames[:, k] is step t + k of the sample's episode
    negatives  (B, C, 210, 160) float, a uniformly random frame of each sample's episode, or None
               (only for methods with `uses_negatives`)
    generator  torch.Generator on the frames' device, for noise a loss draws (the VAE's); seeded by the loop
    """

    frames: torch.Tensor
    negatives: torch.Tensor | None = None
    generator: torch.Generator | None = None
