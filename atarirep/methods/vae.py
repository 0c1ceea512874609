"""VAE baseline: the benchmark encoder's output is the posterior mean; a decoder reconstructs the frame."""

from __future__ import annotations

import torch
from torch import nn

from atarirep import encoders
from atarirep.methods.base import Method
from atarirep.methods.batch import Batch


class VAE(Method):
    """Variational autoencoder (Kingma & Welling 2014) as AtariARI's VAE baseline uses it.

    Its loss is the reference's (squared error and KL both summed; AtariARI also sums over the batch,
    here the batch mean, a constant scale Adam divides out). On Pong its posterior collapses (sigma ~ 1,
    mu nearly constant, the decoder ignores z), as the reference's does: Anand et al. 2019 report VAE
    F1 0.09 on Pong against 0.10 for the majority baseline.
    """

    window = 1
    uses_negatives = False
    is_trainable = True

    def __init__(self, feature_size: int = 256, beta: float = 1.0):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
        self.log_variance = nn.Linear(64 * 9 * 6, feature_size)  # a second head on the flattened conv map
        self.decoder = encoders.BenchmarkDecoder(feature_size)
        self.beta = beta

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Negative ELBO per frame, averaged over the batch (Kingma & Welling 2014, eq. 10):

          L = sum_pixels (sigmoid(dec(z)) - x)^2 + beta * KL(N(mu, sigma^2) || N(0, I)),
          KL = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2),   z = mu + sigma * eps, eps ~ N(0, I)
        with mu = the encoder's output (the features probed) and log sigma^2 from a linear head. In eval
        mode (validation) z = mu, as AtariARI's reparametrize does.
        """
        x = batch.frames[:, 0]  # (B, 1, 210, 160)
        local = self.encoder.local_features(x)  # (B, 128, 11, 8)
        conv_map = self.encoder.global_layers[:-1](local)  # (B, 3456): all but the last Linear
        mu = self.encoder.global_layers[-1](conv_map)  # (B, 256)
        log_variance = self.log_variance(conv_map)  # (B, 256)
        if self.training:
            eps = torch.randn(mu.shape, generator=batch.generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * log_variance) * eps  # (B, 256), reparameterised
        else:
            z = mu  # as AtariARI: eval decodes the mean
        x_hat = torch.sigmoid(self.decoder(z).float())  # (B, 1, 210, 160)
        reconstruction = (x_hat - x).pow(2).flatten(1).sum(1).mean()
        mu, log_variance = mu.float(), log_variance.float()
        kl = (-0.5 * (1 + log_variance - mu.pow(2) - log_variance.exp()).sum(1)).mean()
        loss = reconstruction + self.beta * kl
        return loss, {"reconstruction": reconstruction.detach(), "kl": kl.detach()}
