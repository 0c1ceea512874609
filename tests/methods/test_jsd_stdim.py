"""JSD ST-DIM (atarirep.methods.jsd_stdim) on real Breakout frames."""

import pytest
import torch
from torch.nn import functional as F

from atarirep import pretraining
from tests.methods.conftest import real_batch


def test_jsd_stdim_loss_is_both_terms_scored_by_torch_bilinear_with_binary_cross_entropy(train_split):
    """The reference's SpatioTemporalTrainer: loss1 (global-local) + loss2 (local-local), each BCE over
    positives (x_{t+1}, x_t) and negatives (x_{t+1}, x_hat); early stopping on the classifiers' accuracy."""
    method = pretraining.build_method("jsd_stdim", seed=0)
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
