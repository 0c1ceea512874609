"""CPC baseline: a GRU summarises encoded frames; its context predicts the encodings k steps ahead."""
from __future__ import annotations

import torch
from torch import nn

from atarirep import encoders
from atarirep.errors import UserError
from atarirep.methods.batch import Batch
from atarirep.methods.infonce import info_nce

# AtariARI's CPC: sequences of 100 steps, predictions at offsets 1, 5, ..., 97 (steps 0..98 by 4, plus 1).
PAPER_OFFSETS = tuple(range(1, 100, 4))


class CPC(nn.Module):
    """Contrastive Predictive Coding (van den Oord et al. 2018) over encoded frame sequences."""

    uses_negatives = False
    is_trainable = True

    def __init__(self, feature_size: int = 256, sequence_length: int = 100,
                 offsets: tuple[int, ...] = PAPER_OFFSETS):
        super().__init__()
        offsets = tuple(int(k) for k in offsets)
        if not offsets or min(offsets) < 1 or max(offsets) >= sequence_length:
            raise UserError(f"cpc offsets {list(offsets)} must be between 1 and sequence_length - 1 = "
                            f"{sequence_length - 1}; lower the offsets or raise sequence_length")
        self.window = sequence_length         # samples are whole sequences of one episode
        self.sample_stride = sequence_length  # an epoch: one sequence per L windows, each frame seen ~once
        self.offsets = offsets
        self.encoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.gru = nn.GRU(feature_size, feature_size, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(feature_size, feature_size) for _ in offsets)  # W_k

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CPC loss (van den Oord et al. 2018, eq. 4), averaged over the offsets k:

          L_k = -log exp(z_{t+k}^T W_k c_t) / sum_{z*} exp(z*^T W_k c_t)
        with z_t = f(x_t), c_t = GRU(z_1..z_t); the negatives z* are the targets at every other
        (sample, time) pair of the batch for the same offset.
        """
        frames = batch.frames                                              # (B, L, 1, 210, 160)
        b, length = frames.shape[:2]
        latents = self.encoder(frames.flatten(0, 1)).view(b, length, -1)  # (B, L, D)
        with torch.autocast(latents.device.type, enabled=False):          # the GRU stays float32
            contexts, _ = self.gru(latents.float())                        # (B, L, D)
        losses = []
        for k, predictor in zip(self.offsets, self.predictors):
            predictions = predictor(contexts[:, :length - k]).reshape(-1, latents.shape[-1])  # (B(L-k), D)
            targets = latents[:, k:].reshape(-1, latents.shape[-1])        # (B(L-k), D)
            losses.append(info_nce(predictions, targets.to(predictions.dtype)))
        losses = torch.stack(losses)                                       # (K,)
        metrics = {f"offset_{k}": value.detach() for k, value in zip(self.offsets, losses)}
        return losses.mean(), metrics
