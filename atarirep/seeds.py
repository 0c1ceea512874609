"""Every random stream of the lab, derived here from the study's `seed` param (and a run's or a worker's number).

A stage that draws random numbers asks this module for its stream, so that two streams never coincide by
accident and a reader can see every one of them at once:

| stream | derived from | used by |
| --- | --- | --- |
| `collection_env` | seed, dataset stream (pretrain 0, probe 1), env rank | an env's emulator, no-ops, actions |
| `dataset_split` | seed, dataset stream, 2**20 | which episodes go to train, val and test |
| `pretraining`, `torch_weights` | the method's seed | the epochs' sample order; the weights |
| `pretraining_noise` | the method's seed, process rank | a method's noise (VAE's), per DDP process |
| `validation_plan` / `validation_noise` | the method's seed (and epoch) | the validation batches and their noise |
| `probe_streams` | the probe seed | the probes' weights, batch order, validation draws |
| `supervised_streams` | the probe seed, variable group i | a supervised baseline encoder's weights and draws |
| `test_rows` | the probe seed | the test samples scored |
| `agent_run` | seed, run number (the SEED folder) | an agent run's weights, actions, minibatches |
| `ppo_games` | agent run, segment (new games after a checkpoint) | PPO's envs' reset seed (env i: plus i) |
| `impala_actor` | agent run, learner step it (re)started at, actor | an IMPALA actor's games and action draws |
| `agent_games` | seed, run number | evaluation's and saliency's games of a run (every checkpoint the same) |
| `emulator` | an env's reset seed | its no-op generator and ALE's sticky-action seed |

The formulas are the ones the pipeline's committed results were made with: changing one changes results.
Torch is imported only by the streams that are torch generators, so collection and agents' envs do not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DATASET_STREAMS = {"pretrain": 0, "probe": 1}  # distinct streams for the two datasets of a game


def collection_env(seed: int, stream: int, rank: int) -> tuple[int, np.random.Generator, np.random.Generator]:
    """(emulator seed, reset-noop RNG, policy RNG) of collecting environment `rank`: independent, reproducible."""
    env_seq, policy_seq, ale_seq = np.random.SeedSequence([seed, stream, rank]).spawn(3)
    ale_seed = int(ale_seq.generate_state(1)[0] % (2**31))
    return ale_seed, np.random.default_rng(env_seq), np.random.default_rng(policy_seq)


def dataset_split(seed: int, stream: int) -> np.random.Generator:
    """The draw of a dataset's episodes into its splits."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, 2**20]))


def pretraining(seed: int) -> np.random.Generator:
    """The order of a pretraining run's training samples (its weights: `torch_weights(seed)`)."""
    return np.random.default_rng(seed)


def pretraining_noise(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """A method's training noise (the VAE's samples) in DDP process `rank`."""
    import torch

    return torch.Generator(device=device).manual_seed(seed * 1000 + rank)


def validation_plan(seed: int, epoch: int | None) -> np.random.Generator:
    """The validation batches: fixed (`epoch` None), or drawn again each epoch from a stream of its own."""
    return np.random.default_rng([seed, 1] if epoch is None else [seed, 1, epoch])


def validation_noise(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """A method's noise during validation in DDP process `rank`."""
    import torch

    return torch.Generator(device=device).manual_seed(seed * 1000 + 999 - rank)


def torch_weights(seed: int) -> None:
    """Seed torch's global RNG for the weights a module is built with (callers fork the RNG around it)."""
    import torch

    torch.manual_seed(seed)


def probe_streams(seed: int) -> tuple[torch.Generator, np.random.Generator, np.random.Generator]:
    """(the probes' initial weights, the training batches' order, the validation draws)."""
    import torch

    return torch.Generator().manual_seed(seed), np.random.default_rng(seed), np.random.default_rng([seed, 1])


def supervised_streams(seed: int, group: int) -> tuple[int, torch.Generator, np.random.Generator, np.random.Generator]:
    """Variable group `group`'s supervised baseline: (the encoder's torch seed, its heads' weights, the training
    batches' order, the validation draws)."""
    import torch

    return (
        seed + group,
        torch.Generator().manual_seed(seed + group),
        np.random.default_rng([seed, group]),
        np.random.default_rng([seed, group, 1]),
    )


def test_rows(seed: int) -> np.random.Generator:
    """The draw of the test samples a probe is scored on."""
    return np.random.default_rng([seed, 2])


def agent_run(study_seed: int, run: int) -> int:
    """The seed of every random source of agent run `run` (the SEED folder) in a study seeded `study_seed`."""
    return study_seed * 1_000 + run


def ppo_games(run_seed: int, segment: int) -> int:
    """PPO's vector env's reset seed for the games played after the `segment`-th checkpoint (env i gets this
    plus i; ALE takes 32-bit seeds)."""
    return int(np.random.SeedSequence([run_seed, segment]).generate_state(1)[0] % (2**31 - 2**16))


def impala_actor(run: tuple[int, ...], actor: int) -> int:
    """Actor `actor`'s seed in an IMPALA run seeded (run seed, learner step it started or resumed from)."""
    return int(np.random.SeedSequence([*run, actor]).generate_state(1)[0])


def agent_games(study_seed: int, run: int) -> int:
    """The seed evaluation and saliency play run `run`'s games from: every checkpoint of a run plays from the
    same starts (common random numbers along its curve)."""
    return int(np.random.SeedSequence([study_seed, run]).generate_state(1)[0] >> 1)


def emulator(seed: int | None) -> tuple[np.uint32, np.uint32]:
    """(no-op generator seed, ALE seed) of an agent env reset with `seed`, as gymnasium's AtariEnv derives them."""
    np_seed, ale_seed = np.random.SeedSequence(seed).generate_state(n_words=2)
    return np_seed, ale_seed
