"""ST-DIM (atarirep.methods.stdim) on real Breakout frames: its terms equal the per-position definition; the
global-local ablation is ST-DIM without the local-local term."""

import math

import pytest
import torch

from atarirep import pretraining
from tests.methods.conftest import real_batch


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
    method = pretraining.build_method("stdim", seed=1)
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
    full = pretraining.build_method("stdim", seed=2)
    ablation = pretraining.build_method("global_local_stdim", seed=2)
    assert ablation.local_local is None and set(full.state_dict()) - set(ablation.state_dict()) == {
        "local_local.weight",
        "local_local.bias",
    }
    batch = real_batch(train_split, full, batch_size=4)
    with torch.no_grad():
        loss, metrics = ablation.loss(batch)
        assert loss.item() == pytest.approx(full.loss(batch)[1]["global_local"].item(), rel=1e-5)
    assert set(metrics) == {"global_local"}
