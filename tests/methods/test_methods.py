"""The pretraining methods (atarirep.methods): every loss falls on real Breakout frames; names known and AtariARI's."""

import pytest
import torch

from atarirep import methods, pretraining
from atarirep.plumbing.errors import UserError
from tests.methods.conftest import real_batch

SMALL = {"cpc": {"sequence_length": 4, "offsets": (1, 2)}, "tokenizer": {"vocab_size": 32, "embed_dim": 16}}


TRAINABLE = [m for m in methods.METHODS if m != "random_cnn"]


@pytest.mark.parametrize("name", TRAINABLE)
def test_each_method_loss_goes_down_over_a_short_run_on_real_frames(train_split, name):
    method = pretraining.build_method(name, seed=0, **SMALL.get(name, {}))
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


def test_unknown_method_lists_the_known_ones_and_atariari_names_still_work():
    with pytest.raises(UserError) as err:
        methods.make("simclr")
    assert str(err.value) == f"pretraining method 'simclr' is unknown; use one of {', '.join(methods.METHODS)}"
    assert isinstance(methods.make("infonce-stdim"), methods.STDIM)
    with pytest.raises(UserError, match=r"bad settings for method 'vae'"):
        methods.make("vae", sequence_length=3)
