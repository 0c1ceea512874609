"""What the training loop (atarirep.pretraining) reads of a pretraining method: the base class of every method."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from atarirep.methods.batch import Batch


class Method(nn.Module):
    """An nn.Module holding an `encoder`; the samples it needs (`window` consecutive frames of one episode,
    `uses_negatives`); `is_trainable` (False: a baseline whose encoder is saved untrained, and has no `loss`)."""

    encoder: nn.Module
    window: int
    uses_negatives: bool
    is_trainable: bool

    if TYPE_CHECKING:  # a trainable method's; a baseline has none (so it is declared for the type checker only)

        def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
