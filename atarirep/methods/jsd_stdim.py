"""JSD-ST-DIM: ST-DIM's global-local and local-local pairs scored bilinearly, with a JSD (binary) objective."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atarirep import encoders
from atarirep.methods.base import Method
from atarirep.methods.batch import Batch
from atarirep.methods.stdim import LOCAL_DEPTH


class JSDSTDIM(Method):
    """ST-DIM with the Jensen-Shannon estimator (Anand et al. 2019, sec. 5 ablation; Hjelm et al. 2019, eq. 4)."""

    window = 2  # (x_t, x_{t+1})
    uses_negatives = True  # plus a random frame of the same episode
    is_trainable = True
    early_stop_metric = "accuracy"  # as AtariARI's SpatioTemporalTrainer: the classifiers' val accuracy

    def __init__(self, feature_size: int = 256):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.global_local = nn.Bilinear(feature_size, LOCAL_DEPTH, 1)
        self.local_local = nn.Bilinear(LOCAL_DEPTH, LOCAL_DEPTH, 1)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = L_GL + L_LL, each BCE(T(pos), 1) + BCE(T(neg), 0) averaged over the 2B x P pairs, i.e. the
        JSD bound -E_P[-sp(-T)] + E_N[sp(T)] + const (Hjelm et al. 2019, eq. 4); AtariARI sums both terms.

        Positive pair: (x_{t+1}, x_t); negative pair: (x_{t+1}, x_hat), x_hat a random frame of the same
        episode. Scores, at each of the P = 11x8 positions mn:
          global-local  T = f(x_{t+1})^T W_g f_mn(x)        local-local  T = f_mn(x_{t+1})^T W_l f_mn(x)
        metrics["accuracy"]: the fraction of the 2B x P pairs each classifier gets right (T >= 0 on
        positives, T < 0 on negatives), the mean of the two terms' fractions.
        """
        x_t, x_next, x_hat = batch.frames[:, 0], batch.frames[:, 1], batch.negatives  # (B, 1, 210, 160) each
        if x_hat is None:
            raise ValueError("jsd_stdim needs a batch with negatives (a random frame of each pair's episode)")
        b = x_t.shape[0]
        global_all, local_all = self.encoder.forward_with_local(torch.cat([x_t, x_next, x_hat]))
        local_all = local_all.flatten(2).transpose(1, 2)  # (3B, P, 128)
        local_t, local_next, local_hat = local_all[:b], local_all[b : 2 * b], local_all[2 * b :]  # (B, P, 128)
        global_next = global_all[b : 2 * b, None]  # (B, 1, 256), broadcast over P

        def jsd(bilinear: nn.Bilinear, anchor, positive, negative):
            # a^T W x + c as (a W) . x: the same score as bilinear(a, x), without its slow kernel;
            # in float32 under bf16 autocast, as info_nce's logits are
            with torch.autocast(anchor.device.type, enabled=False):
                projected = anchor.float() @ bilinear.weight[0].float()  # (B, P or 1, 128)
                logits = (
                    torch.cat([(projected * positive.float()).sum(-1), (projected * negative.float()).sum(-1)])
                    + bilinear.bias.float()
                )  # (2B, P)
            targets = torch.cat([torch.ones(b, logits.shape[1]), torch.zeros(b, logits.shape[1])]).to(logits.device)
            accuracy = ((logits >= 0) == (targets >= 0.5)).float().mean()  # sigmoid(T) >= 0.5, as AtariARI
            return F.binary_cross_entropy_with_logits(logits, targets), accuracy.detach()

        global_local, accuracy_gl = jsd(self.global_local, global_next, local_t, local_hat)
        local_local, accuracy_ll = jsd(self.local_local, local_next, local_t, local_hat)
        # Departs from AtariARI: its early-stopping figure is the SUM of the two accuracies (0..2); the mean
        # ranks epochs identically and reads as an accuracy.
        return global_local + local_local, {
            "global_local": global_local.detach(),
            "local_local": local_local.detach(),
            "accuracy": (accuracy_gl + accuracy_ll) / 2,
        }
