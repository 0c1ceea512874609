"""Games by name, and the protocols they are played under: plain data, needing neither the emulator nor torch.

`game_key` turns any spelling of a game into one key; `PROTOCOLS` say how an agent step maps to emulator frames
and when an episode ends. Modules that only name games or protocols (checkpoints, reports, params checks)
import this one, not `atarirep.envs`, which loads ale-py.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from atarirep.plumbing.errors import UserError

# The games this ale-py ships, as its gymnasium registry names them (`ALE/<Name>-v5`), in sorted order.
# conf/env/ holds one file per name (`-S env=<Name>`); tests/test_imports.py checks both against ale-py.
ALE_GAMES: tuple[str, ...] = (
    "Adventure",
    "AirRaid",
    "Alien",
    "Amidar",
    "Assault",
    "Asterix",
    "Asteroids",
    "Atlantis",
    "Atlantis2",
    "Backgammon",
    "BankHeist",
    "BasicMath",
    "BattleZone",
    "BeamRider",
    "Berzerk",
    "Blackjack",
    "Bowling",
    "Boxing",
    "Breakout",
    "Carnival",
    "Casino",
    "Centipede",
    "ChopperCommand",
    "CrazyClimber",
    "Crossbow",
    "Darkchambers",
    "Defender",
    "DemonAttack",
    "DonkeyKong",
    "DoubleDunk",
    "Earthworld",
    "ElevatorAction",
    "Enduro",
    "Entombed",
    "Et",
    "FishingDerby",
    "FlagCapture",
    "Freeway",
    "Frogger",
    "Frostbite",
    "Galaxian",
    "Gopher",
    "Gravitar",
    "Hangman",
    "HauntedHouse",
    "Hero",
    "HumanCannonball",
    "IceHockey",
    "Jamesbond",
    "JourneyEscape",
    "Kaboom",
    "Kangaroo",
    "KeystoneKapers",
    "KingKong",
    "Klax",
    "Koolaid",
    "Krull",
    "KungFuMaster",
    "LaserGates",
    "LostLuggage",
    "MarioBros",
    "MiniatureGolf",
    "MontezumaRevenge",
    "MrDo",
    "MsPacman",
    "NameThisGame",
    "Othello",
    "Pacman",
    "Phoenix",
    "Pitfall",
    "Pitfall2",
    "Pong",
    "Pooyan",
    "PrivateEye",
    "Qbert",
    "Riverraid",
    "RoadRunner",
    "Robotank",
    "Seaquest",
    "SirLancelot",
    "Skiing",
    "Solaris",
    "SpaceInvaders",
    "SpaceWar",
    "StarGunner",
    "Superman",
    "Surround",
    "Tennis",
    "Tetris",
    "TicTacToe3D",
    "TimePilot",
    "Trondead",
    "Turmoil",
    "Tutankham",
    "UpNDown",
    "Venture",
    "VideoCheckers",
    "VideoChess",
    "VideoCube",
    "VideoPinball",
    "WizardOfWor",
    "WordZapper",
    "YarsRevenge",
    "Zaxxon",
)


def game_key(name: str) -> str:
    """Normalise any spelling of a game to its annotation key.

    `Pong`, `pong`, `PongNoFrameskip-v4`, `ALE/Pong-v5`, `Pong-v5` and `ms_pacman` style names all
    map to the lowercase name without separators (`pong`, `mspacman`).
    """
    base = name.strip().split("/")[-1]
    base = re.sub(r"-v\d+$", "", base)
    base = re.sub(r"(NoFrameskip|Deterministic)$", "", base, flags=re.IGNORECASE)
    base = re.sub(r"-ram$", "", base, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]", "", base.lower())


def resolve_ale_game(name: str) -> str:
    """The ALE name of any game this ale-py has a ROM for, given in any spelling, annotated or not (agents play
    unannotated games too, such as AirRaid, Carnival and NameThisGame of the multi-task set)."""
    names = {game_key(game): game for game in ALE_GAMES}
    if game_key(name) not in names:
        raise UserError(f"game {name!r} has no ROM in this ale-py; use one of {', '.join(ALE_GAMES)}")
    return names[game_key(name)]


@dataclass(frozen=True)
class Protocol:
    """How an agent step maps to emulator frames, and when an episode ends (docs/protocols.md 1 and 4)."""

    name: str
    frame_skip: int  # an agent step repeats its action for this many frames
    noop_max: int  # a real reset plays 1..noop_max no-op frames (0: none)
    fire_on_reset: bool  # press FIRE (then action 2) after a reset, in games that need it
    terminal_on_life_loss: bool  # a life loss ends the episode (stored episodes are per-life segments)
    sticky_action_prob: float  # ALE repeat_action_probability
    max_frames_per_episode: int  # emulator frame cap of a game
    clip_rewards: bool  # rewards become their sign

    def as_dict(self) -> dict:
        return asdict(self)


# The AtariARI benchmark: "NoFrameskip-v4" ALE, wrapped as OpenAI baselines' wrap_deepmind does.
PROTOCOLS = {
    "atariari": Protocol(
        "atariari",
        frame_skip=4,
        noop_max=30,
        fire_on_reset=True,
        terminal_on_life_loss=True,
        sticky_action_prob=0.0,
        max_frames_per_episode=108_000,
        clip_rewards=True,
    ),
    # Agents (docs/protocols.md 4), stepped by atarirep.agents.vector_env: the life-loss rule applies to
    # training only, evaluation always plays whole games. Rewards are clipped for training; returns
    # are reported raw.
    "classic": Protocol(
        "classic",
        frame_skip=4,
        noop_max=30,
        fire_on_reset=True,
        terminal_on_life_loss=True,
        sticky_action_prob=0.0,
        max_frames_per_episode=108_000,
        clip_rewards=True,
    ),
    "modern": Protocol(
        "modern",
        frame_skip=4,
        noop_max=0,
        fire_on_reset=False,
        terminal_on_life_loss=False,
        sticky_action_prob=0.25,
        max_frames_per_episode=108_000,
        clip_rewards=True,
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; UserError listing the known ones otherwise."""
    if name not in PROTOCOLS:
        raise UserError(f"protocol {name!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
