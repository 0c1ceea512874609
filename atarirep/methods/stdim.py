"""ST-DIM and its InfoNCE ablations: contrast an encoder's features across consecutive frames.

`STDIM` (global-local + local-local; with `local_local=False` the "global-local-infonce" ablation),
`GlobalTDIM` (global to global across time) and `StaticDIM` (global-local within one frame).
All use the benchmark encoder and the InfoNCE of atarirep.methods.infonce. JSD-ST-DIM, which
scores pairs differently, is in jsd_stdim.py.
"""

from __future__ import annotations

import torch
from torch import nn

from atarirep import encoders
from atarirep.methods.base import Method
from atarirep.methods.batch import Batch
from atarirep.methods.infonce import info_nce

LOCAL_DEPTH = encoders.BenchmarkEncoder.local_shape[0]  # 128 channels per local vector


class STDIM(Method):
    """Spatiotemporal Deep InfoMax (Anand et al. 2019, "Unsupervised State Representation Learning in Atari")."""

    window = 2  # samples are pairs (x_t, x_{t+1}) of one episode
    uses_negatives = False  # negatives are the other samples of the batch
    is_trainable = True

    def __init__(self, feature_size: int = 256, local_local: bool = True):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.global_local = nn.Linear(feature_size, LOCAL_DEPTH)  # W_g in eq. 4
        self.local_local = nn.Linear(LOCAL_DEPTH, LOCAL_DEPTH) if local_local else None  # W_l in eq. 5

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ST-DIM loss, eq. 3-5 of Anand et al. 2019: L = L_GL + L_LL (L_GL alone without local_local).

        With global features f(x) and local vectors f_mn(x) at each of the P = 11x8 positions:
          L_GL = -1/P sum_mn  log exp(g_mn(x_t, x_{t+1})) / sum_{x*} exp(g_mn(x_t, x*)),
                 g_mn(x_t, x_{t+1}) = (W_g f(x_{t+1}))^T f_mn(x_t)
          L_LL = the same with h_mn(x_t, x_{t+1}) = (W_l f_mn(x_{t+1}))^T f_mn(x_t)
        where x* runs over the x_t of the batch (the other samples are the negatives).
        Positive pairs are consecutive frames of one episode (the loop never pairs across a boundary).
        """
        b = batch.frames.shape[0]
        # One encoder pass over the (B, 2) frames as stored (no copy): rows alternate x_t, x_{t+1}.
        global_all, local_all = self.encoder.forward_with_local(batch.frames.flatten(0, 1))
        global_next = global_all.view(b, 2, -1)[:, 1]  # (B, 256)
        local_all = local_all.flatten(2).view(b, 2, LOCAL_DEPTH, -1).permute(1, 3, 0, 2)  # (2, P, B, 128)
        local_t, local_next = local_all[0], local_all[1]  # (P, B, 128) each, position-major
        num_positions = local_t.shape[0]

        # Global-local: W_g f(x_{t+1}) scored against x_t's local vector at each position.
        queries = self.global_local(global_next)  # (B, 128)
        queries = queries.unsqueeze(0).expand(num_positions, -1, -1)  # (P, B, 128)
        global_local = info_nce(queries, local_t)  # mean over P and B
        metrics = {"global_local": global_local.detach()}
        if self.local_local is None:
            return global_local, metrics

        # Local-local: W_l f_mn(x_{t+1}) scored against x_t's local vector at the same position.
        local_local = info_nce(self.local_local(local_next), local_t)  # (P, B, 128) vs (P, B, 128)
        metrics["local_local"] = local_local.detach()
        return global_local + local_local, metrics


class GlobalTDIM(Method):
    """Global-T-DIM ablation (Anand et al. 2019, sec. 5): InfoNCE between global features across time."""

    window = 2
    uses_negatives = False
    is_trainable = True

    def __init__(self, feature_size: int = 256):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.global_global = nn.Linear(feature_size, feature_size)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = -log exp((W f(x_{t+1}))^T f(x_t)) / sum_{x*} exp((W f(x_{t+1}))^T f(x*)), x* over the batch's x_t."""
        b = batch.frames.shape[0]
        features = self.encoder(batch.frames.flatten(0, 1)).view(b, 2, -1)  # (B, 2, 256): x_t, x_{t+1}
        loss = info_nce(self.global_global(features[:, 1]), features[:, 0])  # (B, 256) vs (B, 256)
        return loss, {"global_global": loss.detach()}


class StaticDIM(Method):
    """Static DIM ablation (Hjelm et al. 2019 with InfoNCE): global-local within the same frame, no time."""

    window = 1
    uses_negatives = False
    is_trainable = True

    def __init__(self, feature_size: int = 256):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.global_local = nn.Linear(feature_size, LOCAL_DEPTH)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = -1/P sum_mn log exp((W f(x))^T f_mn(x)) / sum_{x*} exp((W f(x))^T f_mn(x*)), x* over the batch."""
        x = batch.frames[:, 0]  # (B, 1, 210, 160)
        global_x, local_x = self.encoder.forward_with_local(x)  # (B, 256), (B, 128, 11, 8)
        local_x = local_x.flatten(2).permute(2, 0, 1)  # (P, B, 128)
        queries = self.global_local(global_x).unsqueeze(0).expand(local_x.shape[0], -1, -1)  # (P, B, 128)
        loss = info_nce(queries, local_x)
        return loss, {"global_local": loss.detach()}
