"""CPC baseline: a GRU summarises encoded frames; its context predicts the encodings k steps ahead."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atarirep import encoders
from atarirep.methods.base import Method
from atarirep.methods.batch import Batch
from atarirep.plumbing.errors import UserError

# AtariARI's CPC: sequences of 100 steps, predictions at offsets 1, 5, ..., 97 (steps 0..98 by 4, plus 1).
PAPER_OFFSETS = tuple(range(1, 100, 4))
OFFSET_REDUCTIONS = ("sum", "mean")


class CPC(Method):
    """Contrastive Predictive Coding (van den Oord et al. 2018) over encoded frame sequences."""

    uses_negatives = False
    is_trainable = True
    early_stop_metric = "accuracy"  # as AtariARI's CPCTrainer: the mean over offsets of the val accuracy

    def __init__(
        self,
        feature_size: int = 256,
        sequence_length: int = 100,
        offsets: tuple[int, ...] = PAPER_OFFSETS,
        gru_layers: int = 2,
        offset_reduction: str = "sum",
        adam_eps: float = 1e-8,
    ):
        super().__init__()
        if offset_reduction not in OFFSET_REDUCTIONS:
            raise UserError(
                f"cpc offset_reduction={offset_reduction!r} is not offered; use one of "
                f"{', '.join(OFFSET_REDUCTIONS)} (the reference sums the offsets' losses)"
            )
        if not (isinstance(adam_eps, (int, float)) and adam_eps > 0):
            raise UserError(
                f"cpc adam_eps={adam_eps!r} must be a positive number (the reference: 1e-08, torch's default)"
            )
        self.offset_reduction = offset_reduction
        self.adam_eps = float(adam_eps)  # AtariARI's CPCTrainer builds Adam without eps: torch's 1e-8
        offsets = tuple(int(k) for k in offsets)
        if not offsets or min(offsets) < 1 or max(offsets) >= sequence_length:
            raise UserError(
                f"cpc offsets {list(offsets)} must be between 1 and sequence_length - 1 = "
                f"{sequence_length - 1}; lower the offsets or raise sequence_length"
            )
        if int(gru_layers) < 1:
            raise UserError(f"cpc gru_layers={gru_layers} must be at least 1 (the reference uses 2)")
        self.window = sequence_length  # samples are whole sequences of one episode
        self.sample_stride = sequence_length  # every_frame epoch: one sequence per L windows, each frame seen ~once
        self.samples_per_episode = sequence_length  # reference epoch: L sequences per episode (AtariARI)
        self.offsets = offsets
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.gru = nn.GRU(feature_size, feature_size, num_layers=int(gru_layers), batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(feature_size, feature_size) for _ in offsets)  # W_k

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CPC loss (van den Oord et al. 2018, eq. 4), summed over the offsets k (AtariARI; or their mean):

          L_k = -log exp(z_{t+k}^T W_k c_t) / sum_{z*} exp(z*^T W_k c_t)
        with z_t = f(x_t), c_t = GRU(z_1..z_t); the negatives z* are the targets at every other
        (sample, time) pair of the batch for the same offset. metrics["accuracy"]: the fraction of
        predictions whose own target scores highest among those B(L-k), averaged over k (AtariARI's
        early-stopping figure).
        """
        frames = batch.frames  # (B, L, 1, 210, 160)
        b, length = frames.shape[:2]
        latents = self.encoder(frames.flatten(0, 1)).view(b, length, -1)  # (B, L, D)
        # The GRU, predictions and logits stay float32 under bf16 autocast, as info_nce's logits do.
        with torch.autocast(latents.device.type, enabled=False):
            latents = latents.float()  # (B, L, D)
            contexts, _ = self.gru(latents)  # (B, L, D)
            losses, accuracies = [], []
            for k, predictor in zip(self.offsets, self.predictors, strict=True):
                predictions = predictor(contexts[:, : length - k]).reshape(-1, latents.shape[-1])  # (B(L-k), D): c_t
                targets = latents[:, k:].reshape(-1, latents.shape[-1])  # (B(L-k), D): z_{t+k}, same row order
                logits = predictions @ targets.T  # (B(L-k), B(L-k))
                positives = torch.arange(logits.shape[0], device=logits.device)  # row i's positive is column i
                losses.append(F.cross_entropy(logits, positives))
                accuracies.append((logits.argmax(1) == positives).float().mean())
        per_offset = torch.stack(losses)  # (K,)
        metrics = {f"offset_{k}": value.detach() for k, value in zip(self.offsets, per_offset, strict=True)}
        metrics["accuracy"] = torch.stack(accuracies).mean().detach()
        return (per_offset.sum() if self.offset_reduction == "sum" else per_offset.mean()), metrics
