"""Agent checkpoints in the format of the published trained-agent collections (docs/protocols.md 5).

A checkpoint file is the gzip of a torch-saved dict whose "estimator_state" is the network's
state_dict; files sit at `ALGO_protocol/GAME/SEED/model_STEP.gz`. Ours add plain keys beside it
(format, algo, protocol, game, seed, step, frames, architecture) and still load with nothing but
`torch.load(gzip.open(path), weights_only=True)["estimator_state"]`; a file that holds only
"estimator_state" (as the published ones do) loads too. Optimizer and RNG state for resuming live in
one resume file per run (atarirep.plumbing.resume), not in each of the 200 checkpoints.

`load_network` recognises a state_dict without a config: our actor-critic by its key names, and the published
DQN-family networks (DQN, M-DQN, C51: a Nature CNN with a Q head, `QNetwork`) by the sequence of their
weights' shapes whatever their names (`nn.Sequential`'s "0.weight" ... "9.weight", "_AtariNet__features.0.weight",
"features.", "head.", "fc." prefixes, ...): conv 32x4x8x8, conv 64x32x4x4, conv 64x64x3x3, linear 512x3136,
linear Ax512, each with its bias. A C51 head (A x atoms outputs) needs its atom count: from a tensor named
*support (the collections' "_AtariNet__support", linspace(-10, 10, 51)) or *atoms in the file, or the `atoms`
argument. Dueling heads, noisy layers and other shapes are refused in one line naming the shapes found.
A file without our keys takes game, seed, algo and protocol from its place in the layout and frames = 4 x step.

`geometric_indices(n, keep)` is the rule that keeps `keep` of `n` checkpoints, denser toward the end;
`keep=51` of 200 gives the published collections' list exactly.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from atarirep.games import PROTOCOLS, game_key
from atarirep.plumbing.atomic import write_bytes
from atarirep.plumbing.errors import UserError

if TYPE_CHECKING:  # the networks (torch modules, the encoders) load only where a network is built or named
    from torch import nn

    from atarirep.agents.network import ActorCritic, AgentNetwork, IMPALANet, QNetwork

FORMAT = "atarirep-agent/1"
ALGORITHMS = ("PPO", "IMPALA")  # train_agent: one run per game
MULTITASK_ALGORITHMS = ("IMPALA_PopArt", "IMPALA")  # train_multitask: one run over several games (PopArt or not)
FILE_PATTERN = re.compile(r"^model_(\d+)\.gz$")
FRAME_SKIP = 4  # every protocol's agent step is 4 frames: the published files' step x 4 is their frame count
# The Nature CNN's weights in order (conv 8x8 s4, conv 4x4 s2, conv 3x3 s1, linear), then a head on its 512 features.
NATURE_TORSO = ((32, 4, 8, 8), (64, 32, 4, 4), (64, 64, 3, 3), (512, 3136))
ENCODER_LAYERS = ("encoder.layers.0", "encoder.layers.2", "encoder.layers.4", "encoder.layers.7")
ACTOR_CRITIC_KEYS = frozenset(
    f"{layer}.{kind}" for layer in (*ENCODER_LAYERS, "actor", "critic") for kind in ("weight", "bias")
)
_FIX = "rerun `dvc repro` for the stage that trains it, or `dvc pull` it"


def supported() -> str:
    """What `build_network` loads, the end of each of its refusals."""
    from atarirep.agents.network import MAX_ACTIONS

    return (
        "supported: our actor-critic (encoder.layers.*, actor.*, critic.*) and, under any names, a Nature CNN "
        "Q-network whose weights are in order conv 32x4x8x8, conv 64x32x4x4, conv 64x64x3x3, linear 512x3136, "
        f"linear Ax512 (DQN, M-DQN; A <= {MAX_ACTIONS} actions) or (A x atoms)x512 (C51, with a *support or "
        "*atoms tensor in the file, or load_network's atoms), each with its bias"
    )


def run_dir(root: str | os.PathLike, algo: str, protocol: str, game: str, seed: int) -> Path:
    """`root/ALGO_protocol/GAME/SEED`, the published layout (e.g. PPO_classic/Pong/0)."""
    return Path(root) / f"{algo}_{protocol}" / game / str(seed)


def file_name(step: int) -> str:
    return f"model_{step}.gz"


def save(
    path: str | os.PathLike,
    network: ActorCritic | QNetwork | IMPALANet,
    *,
    algo: str,
    protocol: str,
    game: str | None = None,
    games: Sequence[str] | None = None,
    seed: int,
    step: int,
    frames: int,
) -> None:
    """Write one checkpoint atomically: gzip(torch.save({"estimator_state": ..., our keys})).

    A run names its `game`, or (IMPALA) its `games`: then `game` is "A+B" and the list is kept beside it. An
    IMPALANet records its whole `spec` as "architecture", so that `load_network` rebuilds it."""
    from atarirep.agents.network import IMPALANet

    if (game is None) == (games is None):
        raise ValueError("checkpoints.save takes either game or games")
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    payload: dict = {
        "estimator_state": state,
        "format": FORMAT,
        "algo": algo,
        "protocol": protocol,
        "game": game if games is None else "+".join(games),
    }
    if games is not None:
        payload["games"] = list(games)
    payload.update(
        seed=int(seed),
        step=int(step),
        frames=int(frames),
        architecture=network.spec if isinstance(network, IMPALANet) else _architecture(network),
    )
    write(path, payload)


def write(path: str | os.PathLike, payload: dict) -> None:
    """Write `payload` (with "estimator_state") atomically as gzip(torch.save(payload)); the gzip header has no
    time in it, so the same training writes the same bytes (and the same DVC hash) on any machine, any day."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0))


def read(path: str | os.PathLike) -> dict:
    """The checkpoint's dict; UserError naming the file if it is missing, truncated or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} is missing; {_FIX}")
    try:
        with gzip.open(path, "rb") as f:
            payload = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as err:  # gzip, zlib, pickle and torch raise many types for a damaged file
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}); {_FIX}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("estimator_state"), dict):
        raise UserError(
            f"checkpoint {path} has no 'estimator_state' (not an agent checkpoint of the published "
            f"format); point to a model_STEP.gz written by train_agent"
        )
    return payload


def load_network(
    path: str | os.PathLike, *, atoms: int | None = None
) -> tuple[ActorCritic | QNetwork | IMPALANet, dict]:
    """(the network in eval mode on CPU, the checkpoint's other keys) from a checkpoint file.

    The network is an ActorCritic or a QNetwork, recognised from the state_dict (`build_network`; `atoms`: the
    atom count of a C51 head whose file does not say it), or the IMPALANet its "architecture" names; an
    "architecture" with `acts_greedily` (an IMPALA run's) makes it play its argmax in evaluation. The keys: the
    file's own, and where it lacks them `step` from the name model_STEP.gz, `frames` = 4 x step, `algo`,
    `protocol`, `game` and `seed` from the layout ALGO_protocol/GAME/SEED/model_STEP.gz, and `architecture`.
    """
    from atarirep.agents.network import network_from

    payload = read(path)
    state = payload.pop("estimator_state")
    if atoms is None:  # a count the file gives as a plain key (ours write it in "architecture")
        given = payload.get("atoms", (payload.get("architecture") or {}).get("atoms"))
        atoms = given if isinstance(given, int) and not isinstance(given, bool) else None
    spec = payload.get("architecture") or {}
    network: ActorCritic | QNetwork | IMPALANet
    if spec.get("name") == "impala_actor_critic":  # the IMPALA ResNet, last action/reward inputs, or multi-task
        network = network_from(state, spec, source=f"checkpoint {path}")
    else:
        network = build_network(state, atoms=atoms, source=f"checkpoint {path}")
        if spec.get("acts_greedily"):  # an IMPALA run's ActorCritic-shaped network: it plays its argmax
            network.acts_greedily = True
    if "step" not in payload:
        match = FILE_PATTERN.match(Path(path).name)
        payload["step"] = int(match.group(1)) if match else None
    for key, value in layout_meta(path).items():
        payload.setdefault(key, value)
    if "frames" not in payload and isinstance(payload["step"], int):
        payload["frames"] = FRAME_SKIP * payload["step"]
    payload.setdefault("architecture", _architecture(network))
    return network.eval(), payload


def load_for_game(path: str | os.PathLike, game: str) -> tuple[AgentNetwork, dict]:
    """load_network's (network, keys) for playing or probing `game`: a multi-task network's view with `game`'s
    value output (`OneGame`); UserError when the checkpoint was not trained on `game` (its `games`, or `game`)."""
    from atarirep.agents.network import IMPALANet, OneGame

    network: AgentNetwork
    network, meta = load_network(path)
    games = meta.get("games") or [meta.get("game", game)]
    keys = [game_key(name) for name in games]
    if game_key(game) not in keys:
        raise UserError(
            f"checkpoint {path} was trained on {'+'.join(games)}, not {game}; point to sampled "
            f"checkpoints of {game} (data/checkpoints_sampled/<ALGO_protocol>/{game}, or a multi-task "
            f"run's that lists {game} in multitask.games)"
        )
    if isinstance(network, IMPALANet) and network.num_tasks > 1:
        network = OneGame(network, keys.index(game_key(game))).eval()
    return network, meta


def layout_meta(path: str | os.PathLike) -> dict:
    """{algo, protocol, game, seed} of a file at .../ALGO_protocol/GAME/SEED/model_STEP.gz (a known protocol);
    {} elsewhere. Read from the path as given (made absolute, links not followed: DVC may link files into its cache)."""

    parts = Path(os.path.abspath(path)).parts
    if len(parts) < 5 or not FILE_PATTERN.match(parts[-1]) or not parts[-2].isdigit():
        return {}
    algo, _, protocol = parts[-4].rpartition("_")
    if not algo or protocol not in PROTOCOLS:
        return {}
    return {"algo": algo, "protocol": protocol, "game": parts[-3], "seed": int(parts[-2])}


def build_network(state: dict, *, atoms: int | None = None, source: str = "the state_dict") -> ActorCritic | QNetwork:
    """The network a state_dict holds, its weights loaded: UserError (one line, starting with `source`) otherwise.

    - our ActorCritic's own keys (encoder.layers.*, actor.*, critic.*): an ActorCritic;
    - the Nature CNN's four weights (NATURE_TORSO) and one linear head Ax512, under any names, in that order:
      a QNetwork (DQN) with A actions; a head of A x atoms rows when the file holds a 1-d tensor named *support
      (or a scalar *atoms), or `atoms` is given: a C51 QNetwork (support linspace(-10, 10, atoms) when only
      the count is known);
    - the torso and two heads Ax512 and 1x512 named *actor and *critic (CleanRL's PPO agent): an ActorCritic.
    A dueling head (a 1xN value stream beside an advantage stream) is refused, as is any other sequence of shapes.
    """
    from atarirep.agents.network import C51_SUPPORT, MAX_ACTIONS, ActorCritic, QNetwork, num_actions_of

    offered = supported()  # the text every refusal ends with
    if atoms is not None and atoms < 1:
        raise UserError(f"atoms={atoms} for {source}: a C51 head has at least 2 atoms (51 in C51); give none for DQN")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source} holds an estimator_state that is not a state_dict of tensors; {offered}")
    try:
        if set(state) == ACTOR_CRITIC_KEYS:
            network: ActorCritic | QNetwork = ActorCritic(num_actions_of(state))
            network.load_state_dict(state)
            return network
    except RuntimeError:  # our key names with other shapes: described below with the shapes found
        pass
    weights = [
        (key[: -len("weight")], tensor) for key, tensor in state.items() if key == "weight" or key.endswith(".weight")
    ]
    shapes = [tuple(tensor.shape) for _, tensor in weights]
    found = ", ".join("x".join(map(str, shape)) for shape in shapes[:8]) + (", ..." if len(shapes) > 8 else "")
    found = found or "none"
    prefixes = [prefix for prefix, _ in weights]
    is_torso = tuple(shapes[:4]) == NATURE_TORSO
    heads = [shape for shape in shapes[4:] if len(shape) == 2 and shape[1] == 512]

    if (
        is_torso
        and len(shapes) == 6
        and len(heads) == 2
        and prefixes[4].endswith("actor.")
        and prefixes[5].endswith("critic.")
        and shapes[5][0] == 1
    ):
        network = ActorCritic(shapes[4][0])
        _load_mapped(network, state, prefixes, [*ENCODER_LAYERS, "actor", "critic"], {}, source, found)
        return network
    if tuple(shapes[:3]) == NATURE_TORSO[:3] and len(shapes) > 5 and any(s[0] == 1 for s in shapes[4:] if len(s) == 2):
        raise UserError(
            f"{source} looks like a dueling Q-network (weight shapes {found}: a value head 1xN beside an "
            f"advantage head) or an actor-critic whose heads are not named actor and critic, which is not "
            f"supported; {offered}"
        )
    if not (is_torso and len(shapes) == 5 and len(heads) == 1):
        raise UserError(
            f"{source} holds weights of another network (weight shapes {found}), not a network that "
            f"loads here; {offered}"
        )

    outputs = shapes[4][0]
    supports = [key for key in state if key.rsplit(".", 1)[-1].lower().endswith("support")]
    counts = [key for key in state if key.rsplit(".", 1)[-1].lower().endswith("atoms")]
    if len(supports) > 1 or len(counts) > 1 or any(state[key].numel() != 1 for key in counts):
        raise UserError(
            f"{source} holds several or non-scalar support/atoms tensors ({', '.join(supports + counts)}); "
            "it is not clear which is the C51 head's; " + offered
        )
    support = state[supports[0]].flatten() if supports else None
    in_file = support.numel() if support is not None else int(state[counts[0]].item()) if counts else None
    if atoms is not None and in_file is not None and atoms != in_file:
        raise UserError(
            f"{source} holds a C51 support of {in_file} atoms but atoms={atoms} was given; "
            "drop atoms or give the file's count"
        )
    num_atoms = atoms or in_file or 1
    if outputs % num_atoms:
        raise UserError(
            f"{source}'s Q head has {outputs} outputs, not a multiple of {num_atoms} atoms; give the "
            f"head's atom count (C51: 51) or none for a DQN head; {offered}"
        )
    num_actions = outputs // num_atoms
    if num_actions > MAX_ACTIONS:
        if num_atoms > 1:
            what = f"= {num_actions} actions x {num_atoms} atoms, more actions than"
            fix = "give the head's own atom count"
        else:
            what = "more than"
            fix = (
                "the file holds no *support or *atoms tensor: a distributional (C51) head? load it with "
                "atoms=51 (its atom count)"
            )
        raise UserError(
            f"{source}'s Q head has {outputs} outputs, {what} the {MAX_ACTIONS} actions of any Atari "
            f"game; {fix}; {offered}"
        )
    if num_atoms > 1 and support is None:
        support = torch.linspace(*C51_SUPPORT, num_atoms)
    network = QNetwork(num_actions, num_atoms, support if num_atoms > 1 else None)
    extra = {"support": support} if num_atoms > 1 else {}
    _load_mapped(network, state, prefixes, [*ENCODER_LAYERS, "q"], extra, source, found, ignored=supports + counts)
    return network


def _load_mapped(
    network: nn.Module,
    state: dict,
    prefixes: list[str],
    names: list[str],
    extra: dict,
    source: str,
    found: str,
    ignored: Sequence[str] = (),
) -> None:
    """Load state's `prefix`weight/bias into network's `name`.weight/bias (and `extra`), every tensor used once."""
    offered = supported()  # the text every refusal ends with
    missing = [prefix + "bias" for prefix in prefixes if prefix + "bias" not in state]
    if missing:
        raise UserError(
            f"{source} has layers without biases ({', '.join(missing[:3])} missing; weight shapes {found}); {offered}"
        )
    mapped = dict(extra)
    for prefix, name in zip(prefixes, names, strict=True):
        mapped[f"{name}.weight"], mapped[f"{name}.bias"] = state[prefix + "weight"], state[prefix + "bias"]
    used = {prefix + suffix for prefix in prefixes for suffix in ("weight", "bias")} | set(ignored)
    left = [key for key in state if key not in used]
    if left:
        raise UserError(
            f"{source} holds tensors beyond the Nature CNN and its head ({', '.join(left[:4])}"
            f"{', ...' if len(left) > 4 else ''}; weight shapes {found}): batch norm, noisy or extra "
            f"layers are not supported; {offered}"
        )
    try:
        network.load_state_dict(mapped)
    except RuntimeError as err:  # a bias of the wrong size
        raise UserError(
            f"{source} has weights and biases of mismatched sizes (weight shapes {found}: "
            f"{str(err).splitlines()[-1].strip()}); {offered}"
        ) from None


def _architecture(network: nn.Module) -> dict:
    out = {"name": network.architecture, "num_actions": network.num_actions}
    if getattr(network, "atoms", 1) > 1:
        out["atoms"] = network.atoms
    return out


def list_run(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, path)] of the model_STEP.gz files in one run's folder, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder {folder} is missing; {_FIX}")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := FILE_PATTERN.match(p.name)))
    if not found:
        raise UserError(f"checkpoint folder {folder} holds no model_STEP.gz files; {_FIX}")
    return found


def sampled_runs(root: str | os.PathLike) -> dict[int, list[tuple[int, Path]]]:
    """{seed: [(step, path)] by step} of `root/SEED/model_STEP.gz` (one game's, or one multi-task run's, sampled
    runs: data/checkpoints_sampled/ALGO_protocol/GAME), seeds in order; UserError if `root` is missing or holds
    no seed folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"sampled checkpoints {root} are missing; rerun `dvc repro` for the stage that samples "
            "them (sample_checkpoints, sample_multitask) or `dvc pull` them"
        )
    seeds = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not seeds:
        raise UserError(
            f"{root} holds no SEED folders (0/, 1/, ...) of sampled checkpoints; point to "
            "data/checkpoints_sampled/ALGO_protocol/GAME"
        )
    return {seed: list_run(root / str(seed)) for seed in seeds}


def geometric_indices(n: int, keep: int) -> list[int]:
    """1-based indices of `keep` of `n` checkpoints, denser toward the end; the published rule.

    indices = unique(n + 1 - floor(geomspace(1, n, m))) for the smallest m that yields `keep` of them
    (for 51 of 200, m = 75 and the list is the collections'). The last checkpoint is always kept.
    """
    if keep < 1 or keep > n:
        raise UserError(
            f"keep {keep} checkpoints of {n}: keep must be between 1 and the number of checkpoints "
            f"({n}); lower sample_checkpoints.keep or train longer"
        )
    if keep == n:
        return list(range(1, n + 1))
    for m in range(keep, 100 * n):
        indices = np.unique(n + 1 - np.floor(np.geomspace(1, n, m)).astype(int))
        if len(indices) == keep:
            return indices.tolist()
        if len(indices) > keep:
            break
    raise UserError(f"the geometric rule gives no set of exactly {keep} of {n} checkpoints; choose a keep near {keep}")
