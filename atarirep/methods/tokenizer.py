"""Discrete tokenizer: an IRIS-style VQ autoencoder turning each frame into 16 codebook tokens.

The probed features are the quantized latents flattened, (B, 16 * embed_dim), from the saved
`tokenizer` encoder (atarirep.encoders.TokenEncoder).

Departs from IRIS (Micheli et al. 2023) in three ways:
- input is the full 210x160 grayscale frame (docs/protocols.md 1: downsampling breaks the labels), not
  64x64 RGB; the benchmark encoder's conv stack (to 128x11x8) then a (5, 2) stride-2 conv reach the
  4x4 grid, instead of IRIS's residual/attention encoder with 4 downsamplings;
- no perceptual (LPIPS) term: it needs pretrained VGG weights and nothing may download at run time;
- the decoder mirrors the benchmark encoder (transposed convs), and outputs sigmoid pixels in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from atarirep import encoders
from atarirep.methods.base import Method
from atarirep.methods.batch import Batch


class Tokenizer(Method):
    """VQ-VAE (van den Oord et al. 2017) with IRIS's loss: L1 reconstruction + codebook + beta * commitment."""

    window = 1
    uses_negatives = False
    is_trainable = True

    def __init__(self, vocab_size: int = 512, embed_dim: int = 512, beta: float = 1.0):
        super().__init__()
        self.encoder: encoders.TokenEncoder = encoders.TokenEncoder(vocab_size=vocab_size, embed_dim=embed_dim)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, 128, (5, 2), stride=2),
            nn.ReLU(),  # 4x4 -> 11x8
            *encoders.local_decoder(1),
        )
        self.beta = beta

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """IRIS tokenizer loss (Micheli et al. 2023, sec. 2.1; van den Oord et al. 2017, eq. 3), no perceptual term:

          L = mean |x - dec(z_q)|  +  mean ||sg(z) - z_q||^2  +  beta * mean ||z - sg(z_q)||^2
        z: the encoder's 16 latents, z_q their nearest codebook vectors; the decoder sees
        z + sg(z_q - z) (straight-through), so reconstruction gradients reach the encoder.
        """
        x = batch.frames[:, 0]  # (B, 1, 210, 160)
        z, z_q, tokens = self.encoder.encode(x)  # (B, 16, D), (B, 16, D), (B, 16)
        codebook = (z.detach() - z_q).float().pow(2).mean()  # moves codes toward the latents
        commitment = (z - z_q.detach()).float().pow(2).mean()  # keeps latents near their codes
        z_straight = z + (z_q - z).detach()  # (B, 16, D), straight-through
        grid = z_straight.transpose(1, 2).reshape(x.shape[0], -1, *self.encoder.grid)  # (B, D, 4, 4)
        x_hat = torch.sigmoid(self.decoder(grid).float())  # (B, 1, 210, 160)
        reconstruction = (x - x_hat).abs().mean()
        loss = reconstruction + codebook + self.beta * commitment
        metrics = {
            "reconstruction": reconstruction.detach(),
            "codebook": codebook.detach(),
            "commitment": commitment.detach(),
            "codes_used": torch.tensor(float(tokens.unique().numel())),
        }
        return loss, metrics
