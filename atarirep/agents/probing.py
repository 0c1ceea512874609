"""Probing an agent's encoder: the labelled episodes seen as the agent sees them, its 512-d features, and the
probe stage's batched linear probes on them (docs/protocols.md 2, with the agent's network as the encoder).

The agent acts on 84x84 grayscale stacks of 4 (`vector_env`), so a split's stored 210x160 frames are resized
with `vector_env.agent_frames` and stacked within their episode as the env stacks them (copies of an episode's
first frame before it). A stored split's stacks are built over its whole episodes, test frames left out of the
table as duplicates included, so no stack skips back in time where a frame was removed. The probes, their
scores and the scores.csv / metrics.json format are atarirep.probe's (`probe_features`, `method_scores`,
`write_scores`), not a copy. `probe_sampled` probes every checkpoint of the `SEED/model_STEP.gz` folders that
sample_checkpoints writes; `category_curve` and
`category_curve_figure` are F1 per category against training frames; `probe_checkpoints` is the
probe_checkpoints stage, its files written. This module reads no params.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure  # no pyplot, as atarirep.reports.probes
from tqdm import tqdm

from atarirep import annotations as ram_annotations
from atarirep import episodes, reports
from atarirep.agents import checkpoints
from atarirep.agents.network import AgentNetwork
from atarirep.games import game_key
from atarirep.plumbing import atomic, devices
from atarirep.plumbing.errors import UserError
from atarirep.probe.features import ENCODE_BATCH_SIZE
from atarirep.probe.stage import (
    check_settings,
    load_probe_data,
    method_scores,
    probe_features,
    scored_test_rows,
    write_scores,
)
from atarirep.scores import aggregate, summarize

METHOD = "rl_agent"  # the method name of an agent's encoder in data/probes/<game>/<method>
RESIZE_BATCH_SIZE = 1024  # stored frames read and resized at a time
CHECKPOINT_COLUMNS = ("game", "seed", "step", "frames")


@dataclass(frozen=True)
class AgentView:
    """A split's frames as the agent sees them: `frames` (U, 84, 84) uint8 and `index` (T, 4), row t's stack being
    frames[index[t]], oldest first."""

    frames: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def stacks(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, 4, 84, 84) uint8 stacks of rows start:stop."""
        return self.frames[self.index[start:stop]]


def first_frames(split: episodes.Episodes) -> np.ndarray:
    """(T,) bool: the rows that start an episode of `split` (its episodes are contiguous, in order)."""
    is_first = np.zeros(len(split), bool)
    is_first[split.episode_bounds()[:-1]] = True
    return is_first


def agent_view(split: episodes.Episodes, *, batch_size: int = RESIZE_BATCH_SIZE) -> AgentView:
    """The agent's view of a split, `batch_size` stored frames read and resized by `agent_frames` at a time.

    A stored split (frames that know their episodes' first frames) is stacked from frames.bin, every frame of an
    episode in its history; frames in memory are stacked over the split's own rows (`stack_indices`)."""
    from atarirep.agents.vector_env import AGENT_FRAME, STACK, agent_frames, stack_indices  # the env's resize

    frames = split.frames
    read: Callable[[np.ndarray], Any]  # stored frames' ids -> (N, 210, 160) frames
    if isinstance(frames, episodes.LazyFrames) and frames.first_ids is not None:
        ids, index = np.unique(frames.history(STACK), return_inverse=True)
        read = frames.read
    else:
        ids, index = np.arange(len(split)), stack_indices(first_frames(split))
        read = functools.partial(operator.getitem, frames)
    table = np.empty((len(ids), *AGENT_FRAME), np.uint8)
    for start in range(0, len(ids), batch_size):
        table[start : start + batch_size] = agent_frames(np.asarray(read(ids[start : start + batch_size])))
    return AgentView(table, index.reshape(len(split), STACK))


def agent_features(
    network: AgentNetwork,
    split: episodes.Episodes | AgentView,
    *,
    batch_size: int = ENCODE_BATCH_SIZE,
    device: str = "cpu",
) -> torch.Tensor:
    """(T, 512) float32 CPU features of a split: `network.features` of each frame's 84x84x4 stack (never reaching
    into the previous episode), `batch_size` stacks at a time, no grad, eval mode, channels-last on `device`."""
    view = split if isinstance(split, AgentView) else agent_view(split)
    if len(view) == 0:
        raise UserError("a split has no frames to probe; collect more steps so every split has frames")
    dev = devices.resolve(device)
    was_training = network.training
    devices.place(network.eval(), dev)
    out = None
    try:
        with torch.no_grad():
            for start in range(0, len(view), batch_size):
                z = network.features(torch.from_numpy(view.stacks(start, start + batch_size)).to(dev))
                if out is None:
                    out = torch.empty((len(view), z.shape[1]), dtype=torch.float32)
                out[start : start + len(z)] = z.float().cpu()
    finally:
        network.train(was_training)
    assert out is not None  # the view has frames (checked above)
    return out


def probe_network(
    network: AgentNetwork,
    data: dict[str, episodes.Episodes],
    *,
    game: str,
    views: dict[str, AgentView] | None = None,
    method: str = METHOD,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    device: str,
    sampling: str = "reference",
    keep: str = "last",
    progress: bool = False,
) -> pd.DataFrame:
    """Scores (the probe stage's rows: game, method, variable, categories, f1, accuracy, num_epochs) of batched
    linear probes on the network's features of `data`'s train, val and test splits (`views`: their
    `agent_view`s, when computed once for many networks), sampled and kept as the probe stage does."""
    views = views or {name: agent_view(split) for name, split in data.items()}
    features = {name: agent_features(network, views[name], device=device) for name in ("train", "val", "test")}
    predictions, num_epochs = probe_features(
        features,
        data,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        sampling=sampling,
        keep=keep,
        progress=progress,
    )
    rows = scored_test_rows(data["test"].episode_bounds(), sampling=sampling, batch_size=batch_size, seed=seed)
    return method_scores(predictions, data["test"], num_epochs, game=game, method=method, rows=rows)


def probe_checkpoint(
    checkpoint_path: str | os.PathLike,
    episodes_dir: str | os.PathLike,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    device: str,
    sampling: str = "reference",
    keep: str = "last",
    progress: bool = False,
) -> pd.DataFrame:
    """Probe one agent checkpoint's encoder on a stored probing dataset (train/val/test): its scores, one row per
    variable, in the probe stage's columns (method `rl_agent`). Writes nothing."""
    check_settings(
        method=METHOD,
        encoder_path=checkpoint_path,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        sampling=sampling,
        keep=keep,
    )
    devices.resolve(device)  # a bad device is refused before any data is read
    game, data = load_probe_data(episodes_dir)
    network, _ = checkpoints.load_for_game(checkpoint_path, game)
    return probe_network(
        network,
        data,
        game=game,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        sampling=sampling,
        keep=keep,
        progress=progress,
    )


# -- the sampled checkpoints of one game ------------------------------------------------------------
def checkpoint_frames(meta: dict, path) -> int:
    """The training frames a checkpoint's weights saw: its `frames` key (ours always have it)."""
    frames = meta.get("frames")
    if not isinstance(frames, int) or isinstance(frames, bool):
        raise UserError(
            f"checkpoint {path} does not say how many frames it trained on (no 'frames' key); "
            "probe checkpoints written by train_agent"
        )
    return frames


def probe_sampled(
    root: str | os.PathLike,
    episodes_dir: str | os.PathLike,
    *,
    game: str,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    device: str,
    sampling: str = "reference",
    keep: str = "last",
    progress: bool = False,
) -> tuple[pd.DataFrame, int]:
    """Probe every checkpoint of `checkpoints.sampled_runs(root)` on the probing dataset at `episodes_dir`.

    Every checkpoint is read (and checked: format, network, game, frames) before any data is; the dataset is
    read and resized once. Returns (scores, the number of test frames): one row per (seed, checkpoint,
    variable): game, seed, step, frames, method, variable, categories (tuple), f1, accuracy, num_epochs;
    seeds and steps in order.
    """
    check_settings(
        method=METHOD,
        encoder_path=root,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        sampling=sampling,
        keep=keep,
    )
    devices.resolve(device)
    found = []
    for run_seed, run in checkpoints.sampled_runs(root).items():
        for step, path in run:
            _, meta = checkpoints.load_for_game(path, game)  # a damaged file, another network or game stops here
            found.append((run_seed, step, checkpoint_frames(meta, path), path))
    data_game, data = load_probe_data(episodes_dir)
    if game_key(data_game) != game_key(game):
        raise UserError(
            f"episodes {episodes_dir} are {data_game}, not {game}; probe {game}'s checkpoints on "
            f"data/episodes/{game}/probe"
        )
    views = {name: agent_view(split) for name, split in data.items()}
    parts = []
    for run_seed, step, frames, path in tqdm(found, desc="checkpoints", disable=not progress):
        network, _ = checkpoints.load_for_game(path, game)
        part = probe_network(
            network,
            data,
            game=data_game,
            views=views,
            lr=lr,
            batch_size=batch_size,
            epochs=epochs,
            patience=patience,
            seed=seed,
            device=device,
            sampling=sampling,
            keep=keep,
        )
        part.insert(1, "seed", run_seed)
        part.insert(2, "step", step)
        part.insert(3, "frames", frames)
        parts.append(part)
    return pd.concat(parts, ignore_index=True), len(data["test"])


def method_rows(sampled: pd.DataFrame, run_seed: int, step: int) -> pd.DataFrame:
    """One checkpoint's rows of `probe_sampled`, in the probe stage's scores columns."""
    rows = sampled[(sampled["seed"] == run_seed) & (sampled["step"] == step)]
    return rows.drop(columns=["seed", "step", "frames"]).reset_index(drop=True)


def category_curve(sampled: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """A row per (seed, checkpoint): seed, step, frames, then `metric` per category (benchmark order) and
    across_categories (the mean of the category means, the probe stage's per-game figure)."""
    rows = []
    for (run_seed, step, frames), part in sampled.groupby(["seed", "step", "frames"], sort=True):
        per_category = aggregate(part[["variable", "categories", "f1", "accuracy"]], "category")
        means = dict(zip(per_category["category"], per_category[metric], strict=True))
        rows.append(
            {
                "seed": run_seed,
                "step": step,
                "frames": frames,
                **means,
                "across_categories": float(np.mean(list(means.values()))) if means else np.nan,
            }
        )
    categories = [c for c in ram_annotations.CATEGORIES if any(c in row for row in rows)]
    return pd.DataFrame(rows, columns=["seed", "step", "frames", *categories, "across_categories"])


def category_curve_figure(curve: pd.DataFrame, metric: str = "f1", title: str = "") -> Figure:
    """`metric` per category (and across categories, dashed) against training frames, the mean over seeds."""
    num_seeds = curve["seed"].nunique()
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    reports.draw_category_curve(ax, curve, metric)
    ax.set_title(f"{title}{metric} per category, mean over {num_seeds} seed{'s' * (num_seeds != 1)}")
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


# -- the probe_checkpoints stage --------------------------------------------------------------------
def probe_checkpoints(
    game: str,
    sampled_root: str | os.PathLike,
    episodes_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    rl_agent_dir: str | os.PathLike,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    device: str,
    sampling: str = "reference",
    keep: str = "last",
    progress: bool = False,
) -> None:
    """The probe_checkpoints stage: `probe_sampled`, then, all at once, <out_dir>/scores.csv (per seed, checkpoint
    and variable), f1_by_category.{csv,md} (a row per seed x checkpoint), f1_by_category.png (against training
    frames, mean over seeds) and metrics.json; and the first seed's last checkpoint as the method `rl_agent` in
    the probe stage's format (<rl_agent_dir>/scores.csv and metrics.json), for the report's tables."""
    sampled, num_test_frames = probe_sampled(
        sampled_root,
        episodes_dir,
        game=game,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        sampling=sampling,
        keep=keep,
        progress=progress,
    )
    curve = category_curve(sampled, "f1")
    game = sampled["game"].iloc[0]
    first_seed = int(sampled["seed"].min())
    last_step = int(sampled.loc[sampled["seed"] == first_seed, "step"].max())
    rl_agent = method_rows(sampled, first_seed, last_step)
    last = curve.loc[curve.groupby("seed")["step"].idxmax()]
    metrics = {
        "game": game,
        "seeds": [int(s) for s in last["seed"]],
        "num_checkpoints": len(curve),
        "num_variables": int(rl_agent.shape[0]),
        "num_test_frames": num_test_frames,
        "last_checkpoint": {
            "frames": [int(f) for f in last["frames"]],
            "f1_across_categories": [float(v) for v in last["across_categories"]],
            "f1_across_categories_mean": float(last["across_categories"].mean()),
        },
        "rl_agent": {"seed": first_seed, "step": last_step, **summarize(rl_agent)},
    }
    table = sampled.assign(categories=sampled["categories"].map(";".join)).drop(columns="method")
    shown = curve.set_index("seed")
    with atomic.atomic_dir(out_dir) as folder:
        (folder / "scores.csv").write_text(table.to_csv(index=False, lineterminator="\n"))
        (folder / "f1_by_category.csv").write_text(reports.to_csv(shown))
        (folder / "f1_by_category.md").write_text(reports.to_markdown(shown))
        figure = category_curve_figure(curve, "f1", title=f"{game}, {reports.DISPLAY_NAMES[METHOD]}: ")
        figure.savefig(folder / "f1_by_category.png", dpi=120, metadata={"Software": None})
        atomic.write_json(folder / "metrics.json", metrics)
    write_scores(rl_agent_dir, rl_agent, num_test_frames=num_test_frames, sampling=sampling)
    print(
        f"probed {len(curve)} checkpoints of {len(last)} seed(s) of {game}; {METHOD} is seed "
        f"{first_seed}'s step {last_step}"
    )
