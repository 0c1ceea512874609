"""AtariARI's public names as thin adapters over atarirep, so existing user code keeps running.

`get_episodes` collects with atarirep.collection into a temporary folder and returns the reference's
in-memory layout. Departs from AtariARI: frames are uint8 tensors (the reference held float32 copies
of 0..255 values, 4x the memory); scale them by 1/255 when batching for a network.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from atarirep import collection
from atarirep.episodes import Episodes
from atarirep.errors import UserError

TRAIN_MODES = ("train_encoder", "probe", "dry_run")


def _per_episode(episodes: Episodes) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    frames = torch.from_numpy(np.asarray(episodes.frames))
    bounds = episodes.episode_bounds()
    frame_list = [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    labels = torch.from_numpy(episodes.labels.astype("int64"))
    label_list = [{name: labels[a:b, j] for j, name in enumerate(episodes.variables)}
                  for a, b in zip(bounds[:-1], bounds[1:])]
    return frame_list, label_list


def get_episodes(env_name: str, steps: int, seed: int = 42, num_processes: int = 1, num_frame_stack: int = 1,
                 downsample: bool = False, color: bool = False, entropy_threshold: float = 0.6,
                 collect_mode: str = "random_agent", train_mode: str = "probe", checkpoint_index: int = -1,
                 min_episode_length: int = 64, *, num_workers: int = 1, annotation_set: str = "latest",
                 random_actions: str = "nonzero", progress: bool = True):
    """AtariARI's get_episodes on today's gymnasium/ale-py.

    `steps` counts agent steps over all `num_processes` environments. Returns, as the reference does:
    train_mode="probe": tr_episodes, val_episodes, tr_labels, val_labels, test_episodes, test_labels
      (lists of per-episode (T, 1, 210, 160) uint8 tensors; per-episode {variable: (T,) int64 tensor});
    train_mode="train_encoder": tr_episodes, val_episodes (80/20);
    train_mode="dry_run": all episodes and their labels, unsplit.
    `num_workers` > 1 steps the environments in that many processes (same output); a script using it
    needs the `if __name__ == "__main__":` guard that multiprocessing's spawn requires.
    """
    if downsample or color or num_frame_stack != 1:
        raise UserError("get_episodes supports the benchmark's full-size grayscale frames only "
                        "(downsample=False, color=False, num_frame_stack=1): downsampling breaks the labels' meaning")
    if train_mode not in TRAIN_MODES:
        raise UserError(f"train_mode {train_mode!r} is unknown; use one of {', '.join(TRAIN_MODES)}")
    if checkpoint_index != -1:
        raise UserError("checkpoint_index needs a trained agent; collect_mode='pretrained_ppo' is not available yet")
    fractions = {"train_encoder": {"train": 0.8, "val": 0.2}, "probe": {"train": 0.7, "val": 0.1, "test": 0.2},
                 "dry_run": {"train": 1.0}}[train_mode]
    with tempfile.TemporaryDirectory(prefix="atarirep-episodes-") as tmp:
        store = collection.collect(env_name, Path(tmp) / "episodes", steps=steps, splits_fractions=fractions,
                                   seed=seed, purpose="pretrain" if train_mode == "train_encoder" else "probe",
                                   num_envs=num_processes, num_workers=num_workers, annotation_set=annotation_set,
                                   collect_mode=collect_mode, random_actions=random_actions,
                                   min_episode_length=min_episode_length, entropy_threshold=entropy_threshold,
                                   progress=progress)
        splits = {name: _per_episode(store.split(name)) for name in fractions}
    if train_mode == "train_encoder":
        return splits["train"][0], splits["val"][0]
    if train_mode == "dry_run":
        return splits["train"]
    (tr_eps, tr_labels), (val_eps, val_labels), (test_eps, test_labels) = (
        splits["train"], splits["val"], splits["test"])
    return tr_eps, val_eps, tr_labels, val_labels, test_eps, test_labels
