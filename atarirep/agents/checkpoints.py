"""Agent checkpoints in the format of the published trained-agent collections (PROTOCOLS.md 5).

A checkpoint file is the gzip of a torch-saved dict whose "estimator_state" is the network's
state_dict; files sit at `ALGO_protocol/GAME/SEED/model_STEP.gz`. Ours add plain keys beside it
(format, algo, protocol, game, seed, step, frames, architecture) and still load with nothing but
`torch.load(gzip.open(path), weights_only=True)["estimator_state"]`; a file that holds only
"estimator_state" (as the published ones do) loads too. Optimizer and RNG state for resuming live in
one resume file per run (see atarirep.agents.ppo), not in each of the 200 checkpoints.

`geometric_indices(n, keep)` is the rule that keeps `keep` of `n` checkpoints, denser toward the end;
`keep=51` of 200 gives the published collections' list exactly.
"""
from __future__ import annotations

import gzip
import io
import os
import re
from pathlib import Path

import numpy as np
import torch

from atarirep.agents.network import ActorCritic, num_actions_of
from atarirep.errors import UserError
from atarirep.io import write_bytes

FORMAT = "atarirep-agent/1"
ALGORITHMS = ("PPO",)
FILE_PATTERN = re.compile(r"^model_(\d+)\.gz$")
_FIX = "rerun `dvc repro` for the stage that trains it, or `dvc pull` it"


def run_dir(root: str | os.PathLike, algo: str, protocol: str, game: str, seed: int) -> Path:
    """`root/ALGO_protocol/GAME/SEED`, the published layout (e.g. PPO_classic/Pong/0)."""
    return Path(root) / f"{algo}_{protocol}" / game / str(seed)


def file_name(step: int) -> str:
    return f"model_{step}.gz"


def save(path: str | os.PathLike, network: ActorCritic, *, algo: str, protocol: str, game: str, seed: int,
         step: int, frames: int) -> None:
    """Write one checkpoint atomically: gzip(torch.save({"estimator_state": ..., our keys}))."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    payload = {"estimator_state": state, "format": FORMAT, "algo": algo, "protocol": protocol, "game": game,
               "seed": int(seed), "step": int(step), "frames": int(frames),
               "architecture": {"name": ActorCritic.architecture, "num_actions": network.num_actions}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, gzip.compress(buffer.getvalue(), compresslevel=1))


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
        raise UserError(f"checkpoint {path} has no 'estimator_state' (not an agent checkpoint of the published "
                        f"format); point to a model_STEP.gz written by train_agent")
    return payload


def load_network(path: str | os.PathLike) -> tuple[ActorCritic, dict]:
    """(the ActorCritic in eval mode on CPU, the checkpoint's other keys) from a checkpoint file."""
    payload = read(path)
    state = payload.pop("estimator_state")
    try:
        network = ActorCritic(num_actions_of(state))
        network.load_state_dict(state)
    except (KeyError, RuntimeError):
        raise UserError(f"checkpoint {path} holds weights of another network (keys "
                        f"{', '.join(list(state)[:3])}, ...), not the Nature CNN actor-critic; "
                        "point to a checkpoint written by train_agent") from None
    if "step" not in payload:
        match = FILE_PATTERN.match(Path(path).name)
        payload["step"] = int(match.group(1)) if match else None
    return network.eval(), payload


def list_run(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, path)] of the model_STEP.gz files in one run's folder, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder {folder} is missing; {_FIX}")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := FILE_PATTERN.match(p.name)))
    if not found:
        raise UserError(f"checkpoint folder {folder} holds no model_STEP.gz files; {_FIX}")
    return found


def geometric_indices(n: int, keep: int) -> list[int]:
    """1-based indices of `keep` of `n` checkpoints, denser toward the end; the published rule.

    indices = unique(n + 1 - floor(geomspace(1, n, m))) for the smallest m that yields `keep` of them
    (for 51 of 200, m = 75 and the list is the collections'). The last checkpoint is always kept.
    """
    if keep < 1 or keep > n:
        raise UserError(f"keep {keep} checkpoints of {n}: keep must be between 1 and the number of checkpoints "
                        f"({n}); lower sample_checkpoints.keep or train longer")
    if keep == n:
        return list(range(1, n + 1))
    for m in range(keep, 100 * n):
        indices = np.unique(n + 1 - np.floor(np.geomspace(1, n, m)).astype(int))
        if len(indices) == keep:
            return indices.tolist()
        if len(indices) > keep:
            break
    raise UserError(f"the geometric rule gives no set of exactly {keep} of {n} checkpoints; choose a keep "
                    f"near {keep}")
