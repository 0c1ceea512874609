"""The random-CNN baseline (atarirep.methods.random_cnn)."""

import torch

from atarirep import pretraining


def test_random_cnn_has_no_loss_and_keeps_its_seeded_encoder():
    method = pretraining.build_method("random_cnn", seed=5)
    assert not method.is_trainable and not hasattr(method, "loss")
    again = pretraining.build_method("random_cnn", seed=5).encoder.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in method.encoder.state_dict().items())
    other = pretraining.build_method("random_cnn", seed=6).encoder.state_dict()
    assert not torch.equal(other["global_layers.3.weight"], again["global_layers.3.weight"])
