"""InfoNCE with in-batch negatives: the contrastive bound ST-DIM, its ablations and CPC share."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def info_nce(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Mean InfoNCE loss (van den Oord et al. 2018, eq. 4; Anand et al. 2019, eq. 3), a scalar.

    queries (..., N, D) and keys (..., N, D): for each leading index and each row i,
        loss_i = -log( exp(q_i . k_i) / sum_j exp(q_i . k_j) ),
    so key i is query i's positive and the other N - 1 keys (same leading index) its negatives.
    Returns the mean over all leading indices and rows, as float32 whatever the inputs' dtype: the
    logits are computed in float32 even under bf16 autocast, since nobody has measured that bf16
    logits give the same probe F1.
    """
    with torch.autocast(queries.device.type, enabled=False):
        logits = queries.float() @ keys.float().transpose(-1, -2)  # (..., N, N) float32
    n = logits.shape[-1]
    targets = torch.arange(n, device=logits.device).repeat(logits.numel() // (n * n))  # (... * N,)
    return F.cross_entropy(logits.reshape(-1, n), targets)
