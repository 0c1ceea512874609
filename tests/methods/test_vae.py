"""The VAE (atarirep.methods.vae) against a hand computation and the reference ELBO; AtariARI's decoder init."""

import math

import pytest
import torch
from torch.nn import functional as F

from atarirep import encoders, methods, pretraining
from atarirep.methods import Batch
from tests.methods.conftest import real_batch


def test_vae_loss_is_the_summed_reconstruction_plus_beta_kl_computed_by_hand():
    """Decoder output fixed at sigmoid(1) and posterior fixed at N(mu, exp(log_var)): both terms by hand."""
    method = methods.make("vae", feature_size=4, beta=0.5)
    mu, log_var = torch.tensor([0.5, -1.0, 0.0, 2.0]), torch.tensor([0.0, math.log(2), -1.0, 1.0])
    with torch.no_grad():
        method.encoder.global_layers[-1].weight.zero_()
        method.encoder.global_layers[-1].bias.copy_(mu)
        method.log_variance.weight.zero_()
        method.log_variance.bias.copy_(log_var)
        method.decoder.layers[-1].weight.zero_()
        method.decoder.layers[-1].bias.fill_(1.0)
    frames = torch.zeros(2, 1, 1, 210, 160)
    frames[1, 0, 0, :105] = 1.0  # frame 1: top half white, frame 0 black
    loss, metrics = method.loss(Batch(frames, None, torch.Generator().manual_seed(0)))
    c = 1 / (1 + math.exp(-1))  # every predicted pixel
    reconstruction = (33600 * c**2 + (16800 * (1 - c) ** 2 + 16800 * c**2)) / 2  # summed over pixels, mean over frames
    # KL(N(mu, s^2) || N(0, 1)) = -1/2 sum_j (1 + log s_j^2 - mu_j^2 - s_j^2), per dimension:
    kl = -0.5 * ((1 + 0 - 0.25 - 1) + (1 + math.log(2) - 1 - 2) + (1 - 1 - 0 - math.exp(-1)) + (1 + 1 - 4 - math.e))
    assert metrics["reconstruction"].item() == pytest.approx(reconstruction, rel=1e-5)
    assert metrics["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(reconstruction + 0.5 * kl, rel=1e-5)


def test_vae_loss_equals_the_reference_elbo_with_z_sampled_from_the_posterior(train_split):
    """AtariARI's VAELoss (MSE and KL summed over the batch), per frame, against torch.distributions' KL."""
    method = pretraining.build_method("vae", seed=0)
    batch = real_batch(train_split, method, batch_size=3, seed=4)
    x = batch.frames[:, 0]
    with torch.no_grad():
        method.log_variance.bias.fill_(1.0)  # sigma = e^0.5: a z that ignored sigma would show
        loss, metrics = method.loss(Batch(batch.frames, None, torch.Generator().manual_seed(9)))
        conv_map = method.encoder.global_layers[:-1](method.encoder.local_features(x))
        mu, log_var = method.encoder(x), method.log_variance(conv_map)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(9))
        x_hat = torch.sigmoid(method.decoder(mu + torch.exp(0.5 * log_var) * eps))
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu, torch.exp(0.5 * log_var)), torch.distributions.Normal(0.0, 1.0)
        ).sum()
        reference = F.mse_loss(x_hat, x, reduction="sum") + kl  # the reference's batch sum
        x_hat_at_mean = torch.sigmoid(method.decoder(mu))
    assert loss.item() == pytest.approx(reference.item() / 3, rel=1e-5)
    assert metrics["kl"].item() == pytest.approx(kl.item() / 3, rel=1e-5)
    assert F.mse_loss(x_hat_at_mean, x, reduction="sum").item() / 3 != pytest.approx(
        metrics["reconstruction"].item(), rel=1e-3
    )  # the reconstruction really used the sampled z
    with torch.no_grad():  # eval mode (validation) decodes the mean, as AtariARI
        _, eval_metrics = method.eval().loss(Batch(batch.frames, None, torch.Generator().manual_seed(9)))
    assert eval_metrics["reconstruction"].item() == pytest.approx(
        F.mse_loss(x_hat_at_mean, x, reduction="sum").item() / 3, rel=1e-5
    )


def test_decoders_keep_pytorchs_default_init_on_their_linear_layer_as_atariari():
    """AtariARI's Decoder leaves its Linear at nn.Linear's default (uniform in +-1/sqrt(in)), orthogonal elsewhere."""
    decoder = encoders.BenchmarkDecoder(256)
    linear, transposed = decoder.layers[0], decoder.layers[3]
    assert linear.weight.abs().max() <= 1 / math.sqrt(256) and linear.bias.abs().max() > 0
    flat = transposed.weight.flatten(1)  # (64, 128*3*3): orthogonal rows, ReLU gain
    gain = torch.nn.init.calculate_gain("relu")
    torch.testing.assert_close(flat @ flat.T, gain**2 * torch.eye(64), atol=1e-4, rtol=0)
    assert transposed.bias.abs().max() == 0
