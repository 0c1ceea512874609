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
TRAINABLE = [m for m in methods.METHODS if m not in ("random_cnn", "supervised")]


@pytest.fixture(scope="module")
def train_split(breakout_pretrain_dir):
    return episodes.load_splits(breakout_pretrain_dir)["train"]


def real_batch(split, method, batch_size, seed=0) -> Batch:
    """A Batch of real frames for `method`, drawn as the training loop draws them."""
    rng = np.random.default_rng(seed)
    found = training.windows(split, method.window)
    samples = rng.choice(len(found), batch_size, replace=False)
    rows = found.rows(samples)                                                  # (B, W)
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
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3, eps=1e-5)
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
        "local_local.weight", "local_local.bias"}
    batch = real_batch(train_split, full, batch_size=4)
    with torch.no_grad():
        loss, metrics = ablation.loss(batch)
        assert loss.item() == pytest.approx(full.loss(batch)[1]["global_local"].item(), rel=1e-5)
    assert set(metrics) == {"global_local"}


def test_jsd_stdim_scores_equal_torch_bilinear_with_binary_cross_entropy(train_split):
    method = training.build_method("jsd_stdim", seed=0)
    batch = real_batch(train_split, method, batch_size=3)
    with torch.no_grad():
        _, metrics = method.loss(batch)
        g_next, l_next = method.encoder.forward_with_local(batch.frames[:, 1])
        l_t = method.encoder.local_features(batch.frames[:, 0]).flatten(2).transpose(1, 2)
        l_hat = method.encoder.local_features(batch.negatives).flatten(2).transpose(1, 2)
        g_next = g_next[:, None].expand(-1, l_t.shape[1], -1)
        pos, neg = method.global_local(g_next, l_t), method.global_local(g_next, l_hat)
        expected = F.binary_cross_entropy_with_logits(torch.cat([pos, neg]),
                                                      torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))
    assert metrics["global_local"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_untrained_baselines_have_no_loss_and_keep_their_seeded_encoder():
    for name in ("random_cnn", "supervised"):
        method = training.build_method(name, seed=5)
        assert not method.is_trainable and not hasattr(method, "loss")
        again = training.build_method(name, seed=5).encoder.state_dict()
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
    assert str(err.value) == ("cpc offsets [1, 4] must be between 1 and sequence_length - 1 = 3; "
                              "lower the offsets or raise sequence_length")
