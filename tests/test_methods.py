"""Pretraining methods on real Breakout frames: losses fall, ST-DIM equals its per-position definition."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from atarirep import encoders, episodes, methods, training
from atarirep.errors import UserError
from atarirep.methods import Batch, info_nce

SMALL = {"cpc": {"sequence_length": 4, "offsets": (1, 2)}, "tokenizer": {"vocab_size": 32, "embed_dim": 16}}
TRAINABLE = [m for m in methods.METHODS if m != "random_cnn"]


@pytest.fixture(scope="module")
def train_split(breakout_pretrain_dir):
    return episodes.load_splits(breakout_pretrain_dir)["train"]


def real_batch(split, method, batch_size, seed=0) -> Batch:
    """A Batch of real frames for `method`, drawn as the training loop draws them."""
    rng = np.random.default_rng(seed)
    found = training.windows(split, method.window)
    samples = rng.choice(len(found), batch_size, replace=False)
    rows = found.rows(samples)  # (B, W)
    frames = encoders.preprocess(torch.from_numpy(split.frames[rows.reshape(-1)]))
    negatives = None
    if method.uses_negatives:
        negative_rows = found.episode_start[samples] + rng.integers(0, found.episode_length[samples])
        negatives = encoders.preprocess(torch.from_numpy(split.frames[negative_rows]))
    return Batch(frames.view(*rows.shape, 1, 210, 160), negatives, torch.Generator().manual_seed(seed))


def test_info_nce_equals_a_hand_computed_2x2_case():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # logits [[1, 1], [0, 2]]: row 0 -log(e/(e+e)) = log 2; row 1 -log(e^2/(1+e^2))
    expected = (math.log(2) + math.log(1 + math.exp(2)) - 2) / 2
    assert info_nce(queries, keys).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", TRAINABLE)
def test_each_method_loss_goes_down_over_a_short_run_on_real_frames(train_split, name):
    method = training.build_method(name, seed=0, **SMALL.get(name, {}))
    batch = real_batch(train_split, method, batch_size=8)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3, eps=getattr(method, "adam_eps", 1e-5))
    losses = []
    for _ in range(5):
        loss, metrics = method.loss(batch)
        assert loss.ndim == 0 and torch.isfinite(loss) and all(v.ndim == 0 for v in metrics.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def slow_stdim_terms(method, batch):
    """ST-DIM's two terms written as the paper (and AtariARI) do: a loop over the 11x8 positions and samples."""
    x_t, x_next = batch.frames[:, 0], batch.frames[:, 1]
    global_next, _ = method.encoder.forward_with_local(x_next)
    _, local_next = method.encoder.forward_with_local(x_next)
    _, local_t = method.encoder.forward_with_local(x_t)
    n, _, height, width = local_t.shape
    total_gl, total_ll = 0.0, 0.0
    for y in range(height):
        for x in range(width):
            for i in range(n):
                gl = [method.global_local(global_next[i]) @ local_t[j, :, y, x] for j in range(n)]
                ll = [method.local_local(local_next[i, :, y, x]) @ local_t[j, :, y, x] for j in range(n)]
                total_gl += -(gl[i] - torch.logsumexp(torch.stack(gl), 0))
                total_ll += -(ll[i] - torch.logsumexp(torch.stack(ll), 0))
    count = height * width * n
    return total_gl / count, total_ll / count


def test_stdim_terms_equal_a_slow_per_position_loop(train_split):
    method = training.build_method("stdim", seed=1)
    batch = real_batch(train_split, method, batch_size=3)
    with torch.no_grad():  # sharpen the scores: at init every logit is near 0 and both terms near log 3
        method.global_local.weight.mul_(300)
        method.local_local.weight.mul_(300)
        loss, metrics = method.loss(batch)
        slow_gl, slow_ll = slow_stdim_terms(method, batch)
    assert metrics["global_local"].item() == pytest.approx(slow_gl.item(), rel=1e-4)
    assert metrics["local_local"].item() == pytest.approx(slow_ll.item(), rel=1e-4)
    assert loss.item() == pytest.approx(slow_gl.item() + slow_ll.item(), rel=1e-4)
    for term in metrics.values():
        assert abs(term.item() - math.log(3)) > 0.05


def test_global_local_ablation_is_stdim_without_the_local_local_term(train_split):
    full = training.build_method("stdim", seed=2)
    ablation = training.build_method("global_local_stdim", seed=2)
    assert ablation.local_local is None and set(full.state_dict()) - set(ablation.state_dict()) == {
        "local_local.weight",
        "local_local.bias",
    }
    batch = real_batch(train_split, full, batch_size=4)
    with torch.no_grad():
        loss, metrics = ablation.loss(batch)
        assert loss.item() == pytest.approx(full.loss(batch)[1]["global_local"].item(), rel=1e-5)
    assert set(metrics) == {"global_local"}


def test_jsd_stdim_loss_is_both_terms_scored_by_torch_bilinear_with_binary_cross_entropy(train_split):
    """The reference's SpatioTemporalTrainer: loss1 (global-local) + loss2 (local-local), each BCE over
    positives (x_{t+1}, x_t) and negatives (x_{t+1}, x_hat); early stopping on the classifiers' accuracy."""
    method = training.build_method("jsd_stdim", seed=0)
    batch = real_batch(train_split, method, batch_size=3)
    with torch.no_grad():
        method.global_local.weight.mul_(30)  # scores far from 0, so accuracies are not all 0.5
        method.local_local.weight.mul_(30)
        method.local_local.bias.fill_(-0.5)  # and the two terms differ
        loss, metrics = method.loss(batch)
        g_next, l_next = method.encoder.forward_with_local(batch.frames[:, 1])
        l_next = l_next.flatten(2).transpose(1, 2)  # (B, P, 128)
        l_t = method.encoder.local_features(batch.frames[:, 0]).flatten(2).transpose(1, 2)
        l_hat = method.encoder.local_features(batch.negatives).flatten(2).transpose(1, 2)
        g_next = g_next[:, None].expand(-1, l_t.shape[1], -1)  # (B, P, 256)
        expected, accuracies = {}, []
        for name, anchor in (("global_local", g_next), ("local_local", l_next)):
            bilinear = getattr(method, name)
            pos, neg = bilinear(anchor, l_t), bilinear(anchor, l_hat)  # (B, P, 1) each
            expected[name] = F.binary_cross_entropy_with_logits(
                torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
            ).item()
            accuracies.append(((pos >= 0).sum() + (neg < 0).sum()).item() / (2 * pos.numel()))
    assert metrics["global_local"].item() == pytest.approx(expected["global_local"], rel=1e-5)
    assert metrics["local_local"].item() == pytest.approx(expected["local_local"], rel=1e-5)
    assert loss.item() == pytest.approx(expected["global_local"] + expected["local_local"], rel=1e-5)
    assert abs(expected["global_local"] - expected["local_local"]) > 0.01  # a dropped term would show
    assert method.early_stop_metric == "accuracy"
    assert metrics["accuracy"].item() == pytest.approx(sum(accuracies) / 2, abs=1e-6)
    assert 0.5 not in accuracies and accuracies[0] != accuracies[1]


def test_random_cnn_has_no_loss_and_keeps_its_seeded_encoder():
    method = training.build_method("random_cnn", seed=5)
    assert not method.is_trainable and not hasattr(method, "loss")
    again = training.build_method("random_cnn", seed=5).encoder.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in method.encoder.state_dict().items())
    other = training.build_method("random_cnn", seed=6).encoder.state_dict()
    assert not torch.equal(other["global_layers.3.weight"], again["global_layers.3.weight"])


def test_tokenizer_features_are_the_16_quantized_latents_flattened(train_split):
    method = training.build_method("tokenizer", seed=0, vocab_size=32, embed_dim=16)
    x = real_batch(train_split, method, batch_size=2).frames[:, 0]
    _, z_q, tokens = method.encoder.encode(x)
    assert tokens.shape == (2, 16) and z_q.shape == (2, 16, 16)
    torch.testing.assert_close(method.encoder(x), method.encoder.codebook.weight[tokens].flatten(1))


def test_unknown_method_lists_the_known_ones_and_atariari_names_still_work():
    with pytest.raises(UserError) as err:
        methods.make("simclr")
    assert str(err.value) == f"pretraining method 'simclr' is unknown; use one of {', '.join(methods.METHODS)}"
    assert isinstance(methods.make("infonce-stdim"), methods.STDIM)
    with pytest.raises(UserError, match=r"bad settings for method 'vae'"):
        methods.make("vae", sequence_length=3)


def test_cpc_offsets_must_fit_inside_the_sequence():
    with pytest.raises(UserError) as err:
        methods.make("cpc", sequence_length=4, offsets=(1, 4))
    assert str(err.value) == (
        "cpc offsets [1, 4] must be between 1 and sequence_length - 1 = 3; lower the offsets or raise sequence_length"
    )


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
    method = training.build_method("vae", seed=0)
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


class _IndexEncoder(torch.nn.Module):
    """A frame whose first pixel holds i -> the one-hot vector e_i (so z_{b,t} are orthonormal)."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return F.one_hot(x.flatten(1)[:, 0].long(), self.size).float()


class _ScaledIdentityGRU(torch.nn.Module):
    """c_t = scale * z_t (a GRU stand-in, so the context at t is known)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, latents):
        return self.scale * latents, None


def test_cpc_scores_the_prediction_at_t_for_offset_k_against_frame_t_plus_k():
    b, length, s = 2, 5, 2.0
    method = methods.make("cpc", feature_size=b * length, sequence_length=length, offsets=(1, 2))
    method.encoder, method.gru = _IndexEncoder(b * length), _ScaledIdentityGRU(s)
    index = torch.arange(b * length).view(b, length)  # sample i, step t -> one-hot e_{i*L+t}
    with torch.no_grad():
        for k, predictor in zip(method.offsets, method.predictors):
            shift = torch.zeros(b * length, b * length)  # W_k e_{i,t} = e_{i,t+k}
            for i in range(b):
                for t in range(length - k):
                    shift[index[i, t + k], index[i, t]] = 1.0
            predictor.weight.copy_(shift if k == 1 else -shift)  # offset 2 ranks its positive last
            predictor.bias.zero_()
    frames = index.float().view(b, length, 1, 1, 1)
    loss, metrics = method.loss(Batch(frames))
    # Row (i, t) of offset k scores s (or -s) on z_{i,t+k} and 0 on the N - 1 = B(L-k) - 1 other targets.
    n1, n2 = b * (length - 1), b * (length - 2)
    offset_1 = math.log(1 + (n1 - 1) * math.exp(-s))  # -log(e^s / (e^s + n1 - 1))
    offset_2 = math.log(math.exp(-s) + n2 - 1) + s  # -log(e^-s / (e^-s + n2 - 1))
    assert metrics["offset_1"].item() == pytest.approx(offset_1, rel=1e-6)
    assert metrics["offset_2"].item() == pytest.approx(offset_2, rel=1e-6)
    assert loss.item() == pytest.approx(offset_1 + offset_2, rel=1e-6)  # summed, as AtariARI's CPCTrainer
    method.offset_reduction = "mean"
    assert method.loss(Batch(frames))[0].item() == pytest.approx((offset_1 + offset_2) / 2, rel=1e-6)
    assert method.early_stop_metric == "accuracy" and method.adam_eps == 1e-8
    assert metrics["accuracy"].item() == pytest.approx((1.0 + 0.0) / 2)  # every positive first at k=1, none at k=2


def test_cpc_gru_has_the_reference_two_layers_unless_told():
    assert methods.make("cpc", sequence_length=4, offsets=(1,)).gru.num_layers == 2
    assert methods.make("cpc", sequence_length=4, offsets=(1,), gru_layers=1).gru.num_layers == 1
    with pytest.raises(UserError, match=r"cpc gru_layers=0 must be at least 1"):
        methods.make("cpc", sequence_length=4, offsets=(1,), gru_layers=0)


def test_pixel_prediction_target_is_the_next_frame_not_the_current_one():
    """Decoder output fixed at sigmoid(1): the loss is the squared distance of that to x_{t+1} = white."""
    method = methods.make("pixel_pred")
    with torch.no_grad():
        method.decoder.layers[-1].weight.zero_()
        method.decoder.layers[-1].bias.fill_(1.0)
    frames = torch.zeros(2, 2, 1, 210, 160)
    frames[:, 1] = 1.0  # x_t black, x_{t+1} white
    loss, _ = method.loss(Batch(frames))
    c = 1 / (1 + math.exp(-1))
    assert loss.item() == pytest.approx((1 - c) ** 2, rel=1e-5)  # the per-pixel mean; against x_t it would be c^2


def test_pixel_prediction_decodes_through_a_linear_layer_after_the_encoder(train_split):
    method = training.build_method("pixel_pred", seed=0)
    assert isinstance(method.predictor, torch.nn.Linear) and method.predictor.weight.shape == (256, 256)
    batch = real_batch(train_split, method, batch_size=2)
    with torch.no_grad():
        method.predictor.bias.fill_(0.3)  # the loss must go through it
        loss, _ = method.loss(batch)
        prediction = torch.sigmoid(method.decoder(method.predictor(method.encoder(batch.frames[:, 0]))))
        expected = ((prediction - batch.frames[:, 1]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
