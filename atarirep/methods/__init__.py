"""Pretraining methods: each is an nn.Module holding an `encoder` and offering `loss(batch) -> (loss, metrics)`.

A method also says what samples it needs: `window` consecutive frames of one episode, and whether
it `uses_negatives` (a random frame of the same episode); `is_trainable` is False for baselines whose
encoder is saved untrained. An optional `sample_stride` (CPC: its sequence length) makes an
every_frame epoch draw one sample per that many windows, so long windows do not multiply an epoch's
cost; an optional `samples_per_episode` (CPC: its sequence length) sets a reference epoch to that many
samples per episode instead of one per frame (atarirep.sampling). An optional `adam_eps` replaces the
loop's Adam eps of 1e-5 (CPC: 1e-8, as AtariARI's CPCTrainer).
An optional `early_stop_metric = "accuracy"` (CPC, JSD-ST-DIM, as AtariARI) makes the loop early-stop
on the validation mean of `metrics["accuracy"]` (higher is better) instead of the validation loss.
One loop (atarirep.pretraining) trains them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from atarirep.methods.base import Method
from atarirep.methods.batch import Batch
from atarirep.methods.cpc import CPC
from atarirep.methods.infonce import info_nce
from atarirep.methods.jsd_stdim import JSDSTDIM
from atarirep.methods.pixel_pred import PixelPrediction
from atarirep.methods.random_cnn import RandomCNN
from atarirep.methods.stdim import STDIM, GlobalTDIM, StaticDIM
from atarirep.methods.tokenizer import Tokenizer
from atarirep.methods.vae import VAE
from atarirep.plumbing.errors import UserError

_FACTORIES: dict[str, Callable[..., Method]] = {
    "stdim": STDIM,
    "global_local_stdim": functools.partial(STDIM, local_local=False),
    "global_t_dim": GlobalTDIM,
    "jsd_stdim": JSDSTDIM,
    "static_dim": StaticDIM,
    "random_cnn": RandomCNN,
    "vae": VAE,
    "pixel_pred": PixelPrediction,
    "cpc": CPC,
    "tokenizer": Tokenizer,
}
METHODS: tuple[str, ...] = tuple(_FACTORIES)

# The AtariARI command-line names, so `--method infonce-stdim` habits keep working.
ATARIARI_NAMES = {
    "infonce-stdim": "stdim",
    "global-local-infonce-stdim": "global_local_stdim",
    "global-infonce-stdim": "global_t_dim",
    "jsd-stdim": "jsd_stdim",
    "dim": "static_dim",
    "random-cnn": "random_cnn",
    "naff": "pixel_pred",
}


def canonical_name(name: str) -> str:
    """`name` or its AtariARI spelling -> the name in METHODS; UserError listing the known ones."""
    name = ATARIARI_NAMES.get(name, name)
    if name not in _FACTORIES:
        raise UserError(f"pretraining method {name!r} is unknown; use one of {', '.join(METHODS)}")
    return name


def make(name: str, **config) -> Method:
    """A freshly initialised method `name` with its hyperparameters `config` (the paper's by default)."""
    name = canonical_name(name)
    try:
        return _FACTORIES[name](**config)
    except TypeError as err:
        raise UserError(f"bad settings for method {name!r} ({err}); see atarirep/methods for its arguments") from None


__all__ = ["Batch", "Method", "METHODS", "ATARIARI_NAMES", "canonical_name", "make", "info_nce"]
