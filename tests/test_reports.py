"""Reports: tables worked out by hand, their Markdown/CSV/LaTeX renderings, figures, reading probe outputs."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from atarirep import annotations, reports
from atarirep.plumbing.errors import UserError

# f1 per (game, method) for the variables of each game; accuracy is f1 / 2 throughout.
VARIABLES = {
    "Breakout": ["ball_x", "player_x", "score", "foo"],  # small, agent, score, none
    "Pong": ["ball_y", "player_y", "enemy_score", "clock_count"],  # small, agent, score, score+misc
    "SpaceInvaders": ["player_x", "enemies_x", "num_lives", "missiles_y"],
}  # agent, other, lives, small
F1 = {
    ("Breakout", "stdim"): [0.5, 0.6, 0.9, 0.4],
    ("Breakout", "majority"): [0.1, 0.2, 0.3, 0.0],
    ("Pong", "stdim"): [0.7, 0.8, 0.6, 0.2],
    ("Pong", "majority"): [0.2, 0.1, 0.3, 0.5],
}


def hand_results(f1=F1) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "game": game,
                "method": method,
                "variable": v,
                "categories": annotations.categories(v),
                "f1": x,
                "accuracy": x / 2,
            }
            for (game, method), values in f1.items()
            for v, x in zip(VARIABLES[game], values, strict=True)
        ]
    )


def test_game_table_is_each_games_mean_of_category_means_with_a_mean_row():
    table = reports.game_table(hand_results())
    assert list(table.columns) == ["majority", "stdim"]  # majority first
    assert list(table.index) == ["Breakout", "Pong", "mean"]
    breakout_stdim = (0.5 + 0.6 + 0.9) / 3  # foo is in no category
    pong_stdim = (0.7 + 0.8 + (0.6 + 0.2) / 2 + 0.2) / 4  # clock_count: score and misc
    assert table.loc["Breakout", "stdim"] == pytest.approx(breakout_stdim)
    assert table.loc["Pong", "stdim"] == pytest.approx(pong_stdim)
    assert table.loc["mean", "stdim"] == pytest.approx((breakout_stdim + pong_stdim) / 2)
    accuracy = reports.game_table(hand_results(), "accuracy")
    assert accuracy.loc["Pong", "stdim"] == pytest.approx(pong_stdim / 2)


def test_the_mean_row_is_missing_for_a_method_that_lacks_a_game():
    table = reports.game_table(hand_results({**F1, ("Breakout", "supervised"): [1.0, 1.0, 1.0, 1.0]}))
    assert list(table.columns) == ["majority", "stdim", "supervised"]  # supervised last
    assert table.loc["Breakout", "supervised"] == 1.0
    assert math.isnan(table.loc["Pong", "supervised"]) and math.isnan(table.loc["mean", "supervised"])
    summary = reports.summary(hand_results({**F1, ("Breakout", "supervised"): [1.0, 1.0, 1.0, 1.0]}))
    assert summary["f1"]["supervised"] == {"across_categories": None, "overall": None}  # the table's rule
    assert summary["f1"]["stdim"]["across_categories"] == pytest.approx(table.loc["mean", "stdim"])


def test_category_table_averages_each_category_over_the_games_that_have_it():
    table = reports.category_table(hand_results())
    assert list(table.index) == [
        "agent_localization",
        "small_object_localization",
        "score_clock_lives_display",
        "misc",
        "across_categories",
    ]
    assert table.loc["agent_localization", "stdim"] == pytest.approx((0.6 + 0.8) / 2)
    assert table.loc["score_clock_lives_display", "stdim"] == pytest.approx((0.9 + (0.6 + 0.2) / 2) / 2)
    assert table.loc["misc", "stdim"] == pytest.approx(0.2)  # only Pong has a misc variable
    assert table.loc["across_categories", "majority"] == pytest.approx(
        reports.game_table(hand_results()).loc["mean", "majority"]
    )


def test_variable_table_lists_one_games_variables_with_their_categories():
    table = reports.variable_table(hand_results(), "Pong")
    assert list(table.index) == VARIABLES["Pong"]
    assert list(table.columns) == ["categories", "majority", "stdim"]
    assert table.loc["clock_count", "categories"] == "score_clock_lives_display, misc"
    assert table["stdim"].tolist() == [0.7, 0.8, 0.6, 0.2]
    assert set(reports.tables(hand_results())) == {
        f"{m}_by_{k}" for m in ("f1", "accuracy") for k in ("game", "category", "variable_Breakout", "variable_Pong")
    } | {"f1_by_game_vs_paper"}


def test_tables_render_as_markdown_latex_and_csv():
    table = pd.DataFrame(
        {"st_dim": [0.5, float("nan")], "notes": ["a&b", "c"]}, index=pd.Index(["Pong", "mean"], name="game")
    )
    assert reports.to_markdown(table) == (
        "| game | st_dim | notes |\n|:--|--:|:--|\n| Pong | 0.500 | a&b |\n| mean | - | c |\n"
    )
    assert reports.to_latex(table) == (
        "\\begin{tabular}{lrl}\n\\toprule\ngame & st\\_dim & notes \\\\\n\\midrule\n"
        "Pong & 0.500 & a\\&b \\\\\n\\midrule\nmean & -- & c \\\\\n"
        "\\bottomrule\n\\end{tabular}\n"
    )
    assert reports.to_csv(table) == "game,st_dim,notes\nPong,0.500000,a&b\nmean,,c\n"


def test_figures_show_the_table_values():
    results = hand_results()
    bars = reports.category_bars(results)
    assert isinstance(bars, Figure)
    ax = bars.axes[0]
    table = reports.category_table(results)
    assert [c.get_label() for c in ax.containers] == ["majority", "ST-DIM"]  # the paper's names
    heights = [[bar.get_height() for bar in container] for container in ax.containers]
    np.testing.assert_allclose(np.array(heights).T, table.to_numpy())
    heatmap = reports.game_heatmap(results)
    np.testing.assert_allclose(heatmap.axes[0].images[0].get_array(), reports.game_table(results).to_numpy())


def test_save_writes_every_table_format_figure_and_the_summary(tmp_path):
    results = hand_results()
    summary = reports.summary(results)
    assert summary["games"] == ["Breakout", "Pong"]
    assert summary["f1"]["stdim"]["across_categories"] == pytest.approx(
        reports.game_table(results).loc["mean", "stdim"]
    )
    assert summary["f1"]["majority"]["overall"] == pytest.approx((0.6 / 4 + 1.1 / 4) / 2)
    reports.save(tmp_path / "report", reports.tables(results), reports.figures(results), summary)
    names = {p.relative_to(tmp_path / "report").as_posix() for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert {
        "tables/f1_by_game.md",
        "tables/f1_by_game.csv",
        "tables/f1_by_game.tex",
        "tables/accuracy_by_variable_Pong.tex",
        "figures/f1_by_category.png",
        "figures/f1_by_game.png",
        "figures/accuracy_by_game.png",
        "summary.json",
    } <= names
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (tmp_path / "report" / "figures" / "f1_by_game.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left


def write_scores(folder, game, method, f1):
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "game": game,
            "method": method,
            "variable": VARIABLES[game],
            "categories": [";".join(annotations.categories(v)) for v in VARIABLES[game]],
            "f1": f1,
            "accuracy": [x / 2 for x in f1],
            "num_epochs": 3,
        }
    ).to_csv(folder / "scores.csv", index=False)


def test_load_results_reads_exactly_the_games_and_methods_asked_for(tmp_path):
    for (game, method), f1 in F1.items():
        write_scores(tmp_path / game / method, game, method, f1)
    write_scores(tmp_path / "Pong" / "cpc", "Pong", "cpc", [0.0] * 4)  # on disk, not asked for
    results = reports.load_results(tmp_path, ["Breakout", "Pong"], ["majority", "stdim"])
    expected = hand_results().sort_values(["game", "method", "variable"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(results.sort_values(["game", "method", "variable"]).reset_index(drop=True), expected)
    assert set(reports.load_results(tmp_path, ["Pong"], ["stdim"])["game"]) == {"Pong"}


def test_missing_or_corrupt_results_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        reports.load_results(tmp_path, ["Pong"], ["stdim"])
    assert str(err.value) == (
        f"no probe results {tmp_path / 'Pong' / 'stdim' / 'scores.csv'} for game Pong and "
        "method stdim; run its stage (dvc repro probe@Pong-stdim) or dvc pull"
    )
    write_scores(tmp_path / "Pong" / "majority", "Pong", "majority", F1[("Pong", "majority")])
    (tmp_path / "Pong" / "majority" / "scores.csv").write_text("game,method\nPong,majority\n")
    with pytest.raises(UserError) as err:
        reports.load_results(tmp_path, ["Pong"], ["majority"])
    assert str(err.value) == (
        f"probe results {tmp_path / 'Pong' / 'majority' / 'scores.csv'} lack columns variable, "
        "categories, f1, accuracy; rerun its stage (dvc repro -f probe_baseline@Pong-majority)"
    )
    write_scores(tmp_path / "Pong" / "stdim", "Breakout", "stdim", F1[("Pong", "stdim")])
    with pytest.raises(UserError) as err:
        reports.load_results(tmp_path, ["Pong"], ["stdim"])
    assert "hold game Breakout and method stdim, not Pong and stdim" in str(err.value)


def test_methods_follow_the_papers_columns_then_extras_and_ablations_get_their_own_table():
    assert reports.method_order(
        ["tokenizer", "stdim", "supervised", "cpc", "majority", "vae", "pixel_pred", "random_cnn"]
    ) == ["majority", "random_cnn", "vae", "pixel_pred", "cpc", "stdim", "supervised", "tokenizer"]
    f1 = {**F1, ("Pong", "jsd_stdim"): [0.1, 0.1, 0.1, 0.1], ("Breakout", "jsd_stdim"): [0.2, 0.2, 0.2, 0.2]}
    built = reports.tables(hand_results(f1))
    assert list(built["f1_by_game"].columns) == ["majority", "stdim"]
    assert list(built["f1_ablations_by_game"].columns) == ["stdim", "jsd_stdim"]
    assert built["f1_ablations_by_game"].loc["Pong", "jsd_stdim"] == pytest.approx(0.1)
    assert "f1_ablations_by_game" not in reports.tables(hand_results())


def test_difference_from_the_paper_is_ours_minus_theirs_with_a_mean_absolute_row():
    ours = reports.game_table(hand_results())
    paper = reports.paper_tables()["f1_by_game"]
    assert paper.loc["Pong", "stdim"] == 0.81 and paper.loc["mean", "supervised"] == 0.82  # Table 2
    assert reports.paper_tables()["f1_by_category"].loc["misc", "majority"] == 0.26  # Table 3
    difference = reports.paper_difference(ours, paper, ["Breakout", "Pong"])
    assert list(difference.index) == ["Breakout", "Pong", "mean_abs_difference"]  # 2 of 22 games: no mean row
    assert difference.loc["Pong", "stdim"] == pytest.approx(ours.loc["Pong", "stdim"] - 0.81)
    assert difference.loc["Breakout", "majority"] == pytest.approx(ours.loc["Breakout", "majority"] - 0.17)
    assert difference.loc["mean_abs_difference", "stdim"] == pytest.approx(
        (abs(ours.loc["Pong", "stdim"] - 0.81) + abs(ours.loc["Breakout", "stdim"] - 0.88)) / 2
    )
    # Table 3 averages the paper's 22 games: two games' category means are not compared with it.
    assert (
        reports.paper_difference(
            reports.category_table(hand_results()), reports.paper_tables()["f1_by_category"], ["Breakout", "Pong"]
        )
        is None
    )
    built = reports.tables(hand_results())
    assert "f1_by_game_vs_paper" in built and "f1_by_category_vs_paper" not in built
    summary = reports.summary(hand_results())
    assert summary["f1_vs_paper_mean_abs_difference"]["stdim"] == pytest.approx(
        difference.loc["mean_abs_difference", "stdim"]
    )


def test_all_22_games_compare_the_mean_row_and_every_category():
    games = [g for g in reports.paper_tables()["f1_by_game"].index if g != "mean"]
    rows = [
        {
            "game": g,
            "method": "stdim",
            "variable": v,
            "categories": annotations.categories(v),
            "f1": 0.5,
            "accuracy": 0.5,
        }
        for g in games
        for v in ("ball_x", "player_x", "enemy_x", "score", "room")
    ]
    results = pd.DataFrame(rows)
    by_game = reports.paper_difference(reports.game_table(results), reports.paper_tables()["f1_by_game"], games)
    assert by_game.loc["mean", "stdim"] == pytest.approx(0.5 - 0.68)
    by_category = reports.paper_difference(
        reports.category_table(results), reports.paper_tables()["f1_by_category"], games
    )
    assert list(by_category.index) == [*annotations.CATEGORIES, "mean_abs_difference"]
    assert by_category.loc["misc", "stdim"] == pytest.approx(0.5 - 0.75)
    assert by_category.loc["mean_abs_difference", "stdim"] == pytest.approx(
        np.mean(np.abs(0.5 - np.array([0.58, 0.51, 0.69, 0.87, 0.75])))
    )


def test_the_rl_agent_is_one_more_column_after_the_extra_encoders_when_report_rl_agent_is_on(tmp_path, monkeypatch):
    assert reports.method_order(["rl_agent", "tokenizer", "stdim", "majority"]) == [
        "majority",
        "stdim",
        "tokenizer",
        "rl_agent",
    ]
    for (game, method), f1 in F1.items():
        write_scores(tmp_path / "probes" / game / method, game, method, f1)
    write_scores(tmp_path / "probes" / "Pong" / "rl_agent", "Pong", "rl_agent", [0.9, 0.9, 0.9, 0.9])
    report = {"methods": ["stdim"], "baselines": ["majority"]}
    monkeypatch.chdir(tmp_path)
    stage = runpy.run_path(str(Path(__file__).resolve().parents[1] / "stages/report.py"))  # its main, not run
    for rl_agent, columns in ((True, ["majority", "stdim", "rl_agent"]), (False, ["majority", "stdim"])):
        (tmp_path / "params.yaml").write_text(
            yaml.safe_dump({"games": ["Pong"], "annotations": "latest", "report": {**report, "rl_agent": rl_agent}})
        )
        stage["main"]("probes", f"report_{rl_agent}")
        assert (tmp_path / f"report_{rl_agent}/tables/f1_by_game.csv").read_text().splitlines()[0].split(",") == [
            "game",
            *columns,
        ]
    assert (tmp_path / "report_True/tables/f1_by_game.md").read_text().splitlines()[0] == (
        "| game | majority | ST-DIM | RL agent (PPO) |"
    )
    table = pd.read_csv(tmp_path / "report_True/tables/f1_by_category.csv", index_col=0)
    assert table.loc["across_categories", "rl_agent"] == pytest.approx(0.9)
    with pytest.raises(UserError) as err:
        reports.load_results(tmp_path / "probes", ["Breakout"], ["rl_agent"])
    assert str(err.value) == (
        f"no probe results {tmp_path / 'probes' / 'Breakout' / 'rl_agent' / 'scores.csv'} for "
        "game Breakout and method rl_agent; run its stage (dvc repro probe_checkpoints@Breakout) "
        "or dvc pull"
    )


# SpaceInvaders' num_lives is another RAM byte under `latest` than under `paper`; Breakout's variables are the same.
UNLIKE = {**F1, ("SpaceInvaders", "stdim"): [0.9, 0.5, 0.3, 0.1], ("SpaceInvaders", "majority"): [0.2, 0.2, 0.2, 0.2]}


def test_games_whose_variables_differ_from_the_papers_are_computed_from_the_two_annotation_sets():
    paper_games = [g for g in reports.paper_tables()["f1_by_game"].index if g != "mean"]
    assert reports.unlike_paper(paper_games, "latest") == ["Pitfall", "Pong", "Qbert", "Seaquest", "SpaceInvaders"]
    assert reports.unlike_paper(paper_games, "paper") == []
    # Only renamed (same RAM bytes, same categories): the same measurement, compared.
    assert (
        annotations.for_game("YarsRevenge", "latest").variables
        != annotations.for_game("YarsRevenge", "paper").variables
    )
    assert reports.unlike_paper(["YarsRevenge", "PrivateEye", "Breakout", "BattleZone"], "latest") == []
    with pytest.raises(UserError, match="annotation set 'newest' is unknown"):
        reports.unlike_paper(["Pong"], "newest")


def test_a_game_whose_variables_differ_is_compared_with_the_paper_under_paper_only():
    results = hand_results(UNLIKE)
    ours = reports.game_table(results)
    breakout = abs(ours.loc["Breakout", "stdim"] - 0.88)
    space_invaders = abs(ours.loc["SpaceInvaders", "stdim"] - 0.57)
    note = (
        "Not compared with the paper: Pong, SpaceInvaders (variables differ from the paper's under "
        "annotations: latest); nor are the paper's mean row and Table 3, which average its 22 games."
    )

    latest = reports.tables(results, annotation_set="latest")["f1_by_game_vs_paper"]
    assert list(latest.index) == ["Breakout", "mean_abs_difference"]
    assert latest.loc["mean_abs_difference", "stdim"] == pytest.approx(breakout)
    assert latest.attrs[reports.NOTE] == note
    summary = reports.summary(results, annotation_set="latest")
    assert summary["annotations"] == "latest"
    assert summary["f1_vs_paper_games_left_out"] == ["Pong", "SpaceInvaders"]
    assert summary["f1_vs_paper_mean_abs_difference"]["stdim"] == pytest.approx(breakout)

    paper = reports.tables(results, annotation_set="paper")["f1_by_game_vs_paper"]
    assert list(paper.index) == ["Breakout", "Pong", "SpaceInvaders", "mean_abs_difference"]
    assert paper.loc["SpaceInvaders", "stdim"] == pytest.approx(ours.loc["SpaceInvaders", "stdim"] - 0.57)
    assert reports.NOTE not in paper.attrs
    summary = reports.summary(results, annotation_set="paper")
    assert summary["f1_vs_paper_games_left_out"] == []
    assert summary["f1_vs_paper_mean_abs_difference"]["stdim"] == pytest.approx(
        (breakout + abs(ours.loc["Pong", "stdim"] - 0.81) + space_invaders) / 3
    )


def test_only_games_whose_variables_differ_leave_no_comparison():
    only_unlike = {k: v for k, v in UNLIKE.items() if k[0] == "SpaceInvaders"}
    assert "f1_by_game_vs_paper" not in reports.tables(hand_results(only_unlike), annotation_set="latest")
    summary = reports.summary(hand_results(only_unlike), annotation_set="latest")
    assert summary["f1_vs_paper_games_left_out"] == ["SpaceInvaders"]
    assert "f1_vs_paper_mean_abs_difference" not in summary


def test_with_all_22_games_a_game_left_out_drops_the_mean_row_and_table_3():
    games = [g for g in reports.paper_tables()["f1_by_game"].index if g != "mean"]
    results = pd.DataFrame(
        [
            {
                "game": g,
                "method": "stdim",
                "variable": v,
                "categories": annotations.categories(v),
                "f1": 0.5,
                "accuracy": 0.5,
            }
            for g in games
            for v in ("ball_x", "player_x", "score")
        ]
    )
    latest = reports.tables(results, annotation_set="latest")
    assert "f1_by_category_vs_paper" not in latest
    by_game = latest["f1_by_game_vs_paper"]
    assert list(by_game.index) == [
        g for g in games if g not in ("Pitfall", "Pong", "Qbert", "Seaquest", "SpaceInvaders")
    ] + ["mean_abs_difference"]
    paper = reports.tables(results, annotation_set="paper")
    assert paper["f1_by_game_vs_paper"].loc["mean", "stdim"] == pytest.approx(0.5 - 0.68)
    assert "f1_by_category_vs_paper" in paper


def test_the_note_is_written_under_the_markdown_and_latex_tables_and_not_in_the_csv(tmp_path):
    results = hand_results(UNLIKE)
    built = reports.tables(results, annotation_set="latest")
    reports.save(tmp_path / "report", built, {}, reports.summary(results, annotation_set="latest"))
    tables = tmp_path / "report" / "tables"
    note = built["f1_by_game_vs_paper"].attrs[reports.NOTE]
    markdown = (tables / "f1_by_game_vs_paper.md").read_text().splitlines()
    assert markdown[-3].startswith("| mean_abs_difference |") and markdown[-2:] == ["", f"Note: {note}"]
    latex = (tables / "f1_by_game_vs_paper.tex").read_text().splitlines()
    assert latex[-2:] == [
        r"\end{tabular}",
        r"\par\smallskip{\footnotesize Note: Not compared with the paper: "
        r"Pong, SpaceInvaders (variables differ from the paper's under annotations: latest); nor "
        r"are the paper's mean row and Table 3, which average its 22 games.\par}",
    ]
    csv = (tables / "f1_by_game_vs_paper.csv").read_text()
    assert csv == reports.to_csv(built["f1_by_game_vs_paper"]) and "Note" not in csv
    assert [line.split(",")[0] for line in csv.splitlines()] == ["game", "Breakout", "mean_abs_difference"]
    assert (tables / "f1_by_game.md").read_text().endswith("|\n")  # other tables have no note
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["f1_vs_paper_games_left_out"] == ["Pong", "SpaceInvaders"]
