"""The tokenizer (atarirep.methods.tokenizer) on real Breakout frames."""

import torch

from atarirep import pretraining
from tests.methods.conftest import real_batch


def test_tokenizer_features_are_the_16_quantized_latents_flattened(train_split):
    method = pretraining.build_method("tokenizer", seed=0, vocab_size=32, embed_dim=16)
    x = real_batch(train_split, method, batch_size=2).frames[:, 0]
    _, z_q, tokens = method.encoder.encode(x)
    assert tokens.shape == (2, 16) and z_q.shape == (2, 16, 16)
    torch.testing.assert_close(method.encoder(x), method.encoder.codebook.weight[tokens].flatten(1))
