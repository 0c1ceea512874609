"""Scores of probes: weighted F1 and accuracy per state variable, and their means per benchmark category,
across categories and overall (docs/protocols.md section 2).

Plain pandas over the predictions: it imports neither torch nor sklearn at module level (sklearn's F1
only inside `score`), so tables and reports read scores without loading either. It does not train
probes (atarirep.probe) or draw tables (atarirep.reports.probes).

Layout: scores, one row per variable: variable (str), categories (tuple of str), f1, accuracy, and
game, method when known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from atarirep import annotations as ram_annotations
from atarirep.plumbing.errors import UserError

METRICS = ("f1", "accuracy")
GROUP_COLUMNS = ("game", "method")


def score(predictions, labels, variables: Sequence[str]) -> pd.DataFrame:
    """One row per variable: variable (str), categories (tuple of str, docs/protocols.md 2; may be empty),
    f1 (sklearn, average="weighted"), accuracy.

    predictions, labels: (N, V) integers, column j holding variables[j].
    """
    from sklearn.metrics import f1_score  # here, not at the top: reports read scores without sklearn

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.ndim != 2 or labels.shape[1] != len(variables):
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape} must both be (N, {len(variables)})"
        )
    if len(labels) == 0:
        raise UserError("test labels are empty; collect more steps so the test split has frames")
    rows = [
        {
            "variable": v,
            "categories": ram_annotations.categories(v),
            "f1": float(f1_score(labels[:, j], predictions[:, j], average="weighted", zero_division=0)),
            "accuracy": float(np.mean(labels[:, j] == predictions[:, j])),
        }
        for j, v in enumerate(variables)
    ]
    return pd.DataFrame(rows, columns=["variable", "categories", "f1", "accuracy"])


def aggregate(scores: pd.DataFrame, by: str = "category") -> pd.DataFrame:
    """Mean f1 and accuracy of per-variable `scores`, grouped by `game` and `method` when present.

    scores: one row per (game, method, variable), columns variable, categories (tuple), f1, accuracy.
    by="category": one row per (game, method, category) present, the mean over that category's
      variables (a variable in two categories counts in both, one in none in no category);
      columns [game, method,] category, f1, accuracy, num_variables; categories in CATEGORIES order.
    by="across_categories": one row per (game, method): the mean of its category means (a category
      with no variable is absent, not zero), the benchmark's per-game figure.
    by="overall": one row per (game, method): the plain mean over all its variables.
    """
    keys = [c for c in GROUP_COLUMNS if c in scores.columns]
    metrics = list(METRICS)
    if by == "category":
        per_category = scores.explode("categories").dropna(subset=["categories"])
        per_category = per_category.rename(columns={"categories": "category"})
        per_category["category"] = pd.Categorical(per_category["category"], categories=ram_annotations.CATEGORIES)
        out = (
            per_category.groupby([*keys, "category"], sort=True, observed=True)
            .agg(f1=("f1", "mean"), accuracy=("accuracy", "mean"), num_variables=("variable", "size"))
            .reset_index()
        )
        out["category"] = out["category"].astype(str)
        return out
    if by == "across_categories":
        per_category = aggregate(scores, "category")
        if not keys:
            return per_category[metrics].mean().to_frame().T
        return per_category.groupby(keys, sort=False)[metrics].mean().reset_index()
    if by == "overall":
        if not keys:
            return scores[metrics].mean().to_frame().T
        return scores.groupby(keys, sort=False)[metrics].mean().reset_index()
    raise ValueError(f"by must be 'category', 'across_categories' or 'overall', got {by!r}")


def summarize(scores: pd.DataFrame) -> dict:
    """One game's scores as metrics: {"f1": {"across_categories", "overall", <category>...}, "accuracy": {...},
    "num_variables"}; plain floats, for a metrics JSON."""
    per_category = aggregate(scores, "category")
    across = aggregate(scores, "across_categories")
    overall = aggregate(scores, "overall")
    out: dict[str, Any] = {}
    for metric in METRICS:
        out[metric] = {
            "across_categories": float(across[metric].iloc[0]),
            "overall": float(overall[metric].iloc[0]),
            **{c: float(v) for c, v in zip(per_category["category"], per_category[metric], strict=True)},
        }
    out["num_variables"] = int(len(scores))
    return out
