"""The random-CNN baseline: a method whose encoder is saved untrained.

The supervised baseline is not here: atarirep.probe builds and trains its own encoder.
"""

from __future__ import annotations

from atarirep import encoders
from atarirep.methods.base import Method


class RandomCNN(Method):
    """Random-CNN baseline (Anand et al. 2019, sec. 5): the benchmark encoder, orthogonally initialised, frozen.

    Nothing is trained, so there is no loss; the pretrain stage saves the freshly seeded encoder.
    """

    window = 1
    uses_negatives = False
    is_trainable = False

    def __init__(self, feature_size: int = 256):
        super().__init__()
        self.encoder: encoders.BenchmarkEncoder = encoders.BenchmarkEncoder(feature_size=feature_size)
