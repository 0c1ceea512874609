"""The AtariARI RAM annotations: which RAM byte holds which state variable, per game, and its category.

Two annotation sets ship with the package (atarirep/resources): `latest` (24 games, 362 variables) and
`paper` (the 22-game, 308-variable set the benchmark's published tables used). This module does not
touch an emulator: reading the bytes from a running game is `atarirep.envs`' job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import yaml

from atarirep.games import game_key
from atarirep.plumbing.errors import UserError

ANNOTATION_SETS = ("latest", "paper")

# Category keywords, matched on the expanded variable name (docs/protocols.md section 2).
_LOCALIZATION = ("_x", "_y", "_z", "_column")
_SCORE_CLOCK_LIVES_DISPLAY = ("score", "clock", "lives", "lifes", "meter", "display")
_MISC = ("count", "bit_map", "existence", "level", "room", "game_state", "direction")
CATEGORIES = (
    "agent_localization",
    "small_object_localization",
    "other_localization",
    "score_clock_lives_display",
    "misc",
)


@dataclass(frozen=True)
class GameAnnotation:
    """One game's annotated variables, lists already expanded to `<name>_<i>`."""

    game: str  # annotation key: ALE name lowercased without separators, e.g. "mspacman"
    variables: tuple[str, ...]  # expanded names, in file order
    ram_indices: tuple[int, ...]  # ram_indices[j] is the RAM byte of variables[j]


@functools.cache
def _load_set(annotation_set: str) -> dict[str, GameAnnotation]:
    if annotation_set not in ANNOTATION_SETS:
        raise UserError(f"annotation set {annotation_set!r} is unknown; use one of {', '.join(ANNOTATION_SETS)}")
    text = resources.files("atarirep.resources").joinpath(f"annotations_{annotation_set}.yaml").read_text()
    games = {}
    for game, entries in yaml.safe_load(text).items():
        names, indices = [], []
        for name, index in entries.items():
            if isinstance(index, list):  # a list expands into <name>_<i>, i 0-based
                names += [f"{name}_{i}" for i in range(len(index))]
                indices += index
            else:
                names.append(name)
                indices.append(index)
        games[game] = GameAnnotation(game, tuple(names), tuple(indices))
    return games


def annotated_games(annotation_set: str = "latest") -> tuple[str, ...]:
    """The annotation keys of the games in `annotation_set`, sorted."""
    return tuple(sorted(_load_set(annotation_set)))


def for_game(name: str, annotation_set: str = "latest") -> GameAnnotation:
    """The annotation of game `name` (any spelling) in `annotation_set`.

    Raises UserError naming the known games if the game has no annotation in that set.
    """
    games = _load_set(annotation_set)
    key = game_key(name)
    if key not in games:
        raise UserError(
            f"game {name!r} has no RAM annotations in the {annotation_set!r} set; use one of {', '.join(sorted(games))}"
        )
    return games[key]


def categories(variable: str) -> tuple[str, ...]:
    """The benchmark categories of an expanded variable name (docs/protocols.md section 2).

    A name may fall in two categories or in none. Localization splits into agent
    (`agent`/`player`, no `ball`/`missile`), small object (`ball`/`missile`) and other.
    """
    found = []
    if any(k in variable for k in _LOCALIZATION):
        if "ball" in variable or "missile" in variable:
            found.append("small_object_localization")
        elif "agent" in variable or "player" in variable:
            found.append("agent_localization")
        else:
            found.append("other_localization")
    if any(k in variable for k in _SCORE_CLOCK_LIVES_DISPLAY):
        found.append("score_clock_lives_display")
    if any(k in variable for k in _MISC):
        found.append("misc")
    return tuple(found)
