"""Probing: how well each state variable can be read from an encoder's frozen features (docs/protocols.md section 2).

One module per part: `features` (encode every frame once), `linear` (all variables' linear probes
trained as one batched layer), `reference` (the slow AtariARI-style loop, ground truth and
`probe.fast: false`), `baselines` (majority, supervised) and `stage` (the probe stage's `run`).
Scores live in atarirep.scores, which reports read without torch. This package does not learn
encoders (atarirep.methods), read params, or build tables and figures (atarirep.reports.probes).

Layouts used throughout:
  frames    (N, 1, 210, 160) uint8, an array, LazyFrames or tensor
  features  (N, F) float32, one row per frame
  labels    (N, V) integers in 0..255; column j holds variables[j]
"""

from atarirep.probe.baselines import (
    BASELINES,
    SupervisedProbes,
    fit_supervised,
    majority_predictions,
    predict_supervised,
)
from atarirep.probe.features import encode
from atarirep.probe.linear import NUM_CLASSES, LinearProbes, fit_probes, predict
from atarirep.probe.reference import fit_probes_reference, predict_reference
from atarirep.probe.stage import run

__all__ = [
    "BASELINES",
    "NUM_CLASSES",
    "LinearProbes",
    "SupervisedProbes",
    "encode",
    "fit_probes",
    "fit_probes_reference",
    "fit_supervised",
    "majority_predictions",
    "predict",
    "predict_reference",
    "predict_supervised",
    "run",
]
