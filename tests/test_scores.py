"""Scores (atarirep.scores) worked out by hand, read by reports without torch or sklearn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from atarirep import annotations, scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- scores ----------------------------------------------------------------------------------------
def test_weighted_f1_and_accuracy_are_exact_on_a_hand_example():
    labels = np.array([[0, 9], [0, 9], [1, 9], [2, 8]])
    predictions = np.array([[0, 9], [1, 9], [1, 8], [2, 8]])
    table = scores.score(predictions, labels, ["ball_x", "lives"])
    # ball_x: class 0 P 1 R 1/2 -> 2/3 (weight 2/4); class 1 P 1/2 R 1 -> 2/3 (1/4); class 2 -> 1 (1/4).
    # lives: class 9 P 1 R 2/3 -> 4/5 (weight 3/4); class 8 P 1/2 R 1 -> 2/3 (1/4).
    assert table["f1"].tolist() == pytest.approx([0.75, 0.6 + 1 / 6], abs=1e-12)
    assert table["accuracy"].tolist() == [0.75, 0.75]


def test_category_and_across_category_means_are_exact_on_a_hand_example():
    f1 = {"player_x": 0.9, "ball_x": 0.2, "ball_y": 0.4, "score": 1.0, "clock_count": 0.5, "foo": 0.0}
    table = pd.DataFrame(
        {
            "variable": list(f1),
            "categories": [annotations.categories(v) for v in f1],
            "f1": list(f1.values()),
            "accuracy": [v / 2 for v in f1.values()],
        }
    )
    assert table["categories"].tolist() == [
        ("agent_localization",),
        ("small_object_localization",),
        ("small_object_localization",),
        ("score_clock_lives_display",),
        ("score_clock_lives_display", "misc"),
        (),
    ]
    by_category = scores.aggregate(table, "category").set_index("category")
    assert by_category["f1"].to_dict() == pytest.approx(
        {"agent_localization": 0.9, "small_object_localization": 0.3, "score_clock_lives_display": 0.75, "misc": 0.5}
    )
    assert by_category["num_variables"].tolist() == [1, 2, 2, 1]
    assert scores.aggregate(table, "across_categories")["f1"].item() == pytest.approx((0.9 + 0.3 + 0.75 + 0.5) / 4)
    assert scores.aggregate(table, "overall")["f1"].item() == pytest.approx(3.0 / 6)
    summary = scores.summarize(table)
    assert summary["f1"] == pytest.approx(
        {
            "across_categories": 0.6125,
            "overall": 0.5,
            "agent_localization": 0.9,
            "small_object_localization": 0.3,
            "score_clock_lives_display": 0.75,
            "misc": 0.5,
        }
    )  # other_localization absent, not counted as zero
    assert summary["accuracy"]["across_categories"] == pytest.approx(0.6125 / 2)
    assert summary["num_variables"] == 6

    two = pd.concat([table.assign(game="G", method="m1"), table.assign(game="G", method="m2", f1=0.0)])
    across = scores.aggregate(two, "across_categories").set_index("method")["f1"]
    assert across.to_dict() == pytest.approx({"m1": 0.6125, "m2": 0.0})


def test_reports_read_scores_without_importing_torch_or_sklearn():
    code = "import atarirep.reports.probes, sys; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
