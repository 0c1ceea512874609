import pytest

from atarirep import annotations, games
from atarirep.plumbing.errors import UserError


@pytest.mark.parametrize("annotation_set, num_games, num_variables", [("latest", 24, 362), ("paper", 22, 308)])
def test_annotation_sets_have_the_documented_size(annotation_set, num_games, num_variables):
    games = annotations.annotated_games(annotation_set)
    assert len(games) == num_games
    assert sum(len(annotations.for_game(g, annotation_set).variables) for g in games) == num_variables


def test_lists_expand_to_indexed_names_in_order():
    clock = annotations.for_game("PrivateEye")
    assert clock.variables[clock.variables.index("clock_0") :][:2] == ("clock_0", "clock_1")
    assert clock.ram_indices[clock.variables.index("clock_1")] == 69


def test_paper_set_differs_as_its_header_says():
    assert "qbert" in annotations.annotated_games("paper")
    assert len(annotations.for_game("Qbert", "paper").variables) == 5
    paper_si = annotations.for_game("SpaceInvaders", "paper")
    assert paper_si.ram_indices[paper_si.variables.index("num_lives")] == 125
    assert "player_x" not in annotations.for_game("Pong", "paper").variables
    assert "agent_x" in annotations.for_game("PrivateEye", "paper").variables
    with pytest.raises(UserError, match="no RAM annotations in the 'paper' set"):
        annotations.for_game("Skiing", "paper")


@pytest.mark.parametrize(
    "name", ["Pong", "pong", "PONG", "PongNoFrameskip-v4", "ALE/Pong-v5", "Pong-v5", "PongDeterministic-v4"]
)
def test_any_spelling_of_a_game_finds_its_key(name):
    assert games.game_key(name) == "pong"


def test_multiword_names_normalise():
    assert games.game_key("ALE/MsPacman-v5") == games.game_key("ms_pacman") == "mspacman"


def test_unknown_game_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        annotations.for_game("Pongg")
    assert "'Pongg' has no RAM annotations" in str(err.value) and "mspacman" in str(err.value)


def test_unknown_annotation_set_is_refused():
    with pytest.raises(UserError, match="annotation set 'newest' is unknown; use one of latest, paper"):
        annotations.for_game("Pong", "newest")


@pytest.mark.parametrize(
    "variable, expected",
    [
        ("player_x", ("agent_localization",)),
        ("agent_y", ("agent_localization",)),
        ("ball_x", ("small_object_localization",)),
        ("player_missile_x", ("small_object_localization",)),  # missile wins over player
        ("enemy_y", ("other_localization",)),
        ("red_enemy_column", ("other_localization",)),
        ("player_score", ("score_clock_lives_display",)),
        ("fuel_meter_high", ("score_clock_lives_display",)),
        ("block_bit_map_3", ("misc",)),
        ("num_lives_direction", ("score_clock_lives_display", "misc")),  # two categories
        ("tile_color_4", ()),  # none: probed, left out of means
    ],
)
def test_categories_follow_the_benchmark_rules(variable, expected):
    assert annotations.categories(variable) == expected
