"""What imports without the emulator or torch: the package itself, game names, annotations, scores and reports,
so that tables and checks of names run on a machine with neither; and the game list against ale-py's."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from atarirep import games
from atarirep.plumbing.errors import UserError

REPO = Path(__file__).resolve().parents[1]
REFUSE = """\
import importlib, importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ale_py", "torch", "gymnasium"):
            raise ImportError(f"{name} is refused")

sys.meta_path.insert(0, Refuse())
for module in sys.argv[1:]:
    importlib.import_module(module)
"""


@pytest.mark.parametrize(
    "module", ["atarirep", "atarirep.games", "atarirep.annotations", "atarirep.scores", "atarirep.reports"]
)
def test_imports_without_ale_py_torch_or_gymnasium(module):
    result = subprocess.run([sys.executable, "-c", REFUSE, module], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_the_top_level_package_imports_nothing_of_its_own_eagerly():
    """Its names load on first use; atarirep.plumbing.deps leaves it out of every stage's code for that."""
    tree = ast.parse((REPO / "atarirep/__init__.py").read_text())
    eager = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(n.startswith("atarirep") for n in [getattr(node, "module", None) or ""] + [a.name for a in node.names])
    ]
    assert not eager
    import atarirep

    assert atarirep.get_episodes.__module__ == "atarirep.compat"
    from atarirep import annotations

    assert annotations.__name__ == "atarirep.annotations"  # a submodule, not a name the package binds itself
    assert sorted(atarirep.__all__) == ["AtariARIWrapper", "LabelledAtariEnv", "ProbeTrainer", "get_episodes"]


def test_the_game_list_is_what_ale_py_registers_and_conf_has_a_file_per_game():
    gym = pytest.importorskip("gymnasium")
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    registered = {
        key.removeprefix("ALE/").removesuffix("-v5")
        for key in gym.registry
        if key.startswith("ALE/") and key.endswith("-v5") and not key.endswith("-ram-v5")
    }
    assert list(games.ALE_GAMES) == sorted(registered)
    assert sorted(p.stem for p in (REPO / "conf/env").glob("*.yaml")) == list(games.ALE_GAMES)
    for game in games.ALE_GAMES:
        assert (REPO / f"conf/env/{game}.yaml").read_text() == f"# @package _global_\nenv: {game}\n"


def test_resolve_ale_game_takes_any_spelling_and_names_the_games_when_it_has_no_rom():
    for name, ale in [
        ("pong", "Pong"),
        ("ALE/MsPacman-v5", "MsPacman"),
        ("BreakoutNoFrameskip-v4", "Breakout"),
        ("tic_tac_toe_3d", "TicTacToe3D"),
        ("Pong-ram-v5", "Pong"),
    ]:
        assert games.resolve_ale_game(name) == ale
    for bad in ("Pongg", ""):
        with pytest.raises(UserError, match=f"game '{bad}' has no ROM in this ale-py; use one of Adventure, AirRaid"):
            games.resolve_ale_game(bad)
