"""Methods whose encoder is not pretrained: the random-CNN baseline and the supervised baseline's encoder."""
from __future__ import annotations

from torch import nn

from atarirep import encoders


class RandomCNN(nn.Module):
    """Random-CNN baseline (Anand et al. 2019, sec. 5): the benchmark encoder, orthogonally initialised, frozen.

    Nothing is trained, so there is no loss; the pretrain stage saves the freshly seeded encoder.
    """

    window = 1
    uses_negatives = False
    is_trainable = False

    def __init__(self, feature_size: int = 256):
        super().__init__()
        self.encoder = encoders.BenchmarkEncoder(feature_size=feature_size)


class Supervised(RandomCNN):
    """The supervised baseline's starting point: a fresh benchmark encoder that the probe stage trains
    end to end with each variable's linear head (PROTOCOLS.md 2); pretraining leaves it untouched."""
