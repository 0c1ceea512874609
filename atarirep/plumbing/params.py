"""Stage parameters: one frozen, validated dataclass per params.yaml section, plus the shared keys.

The dataclasses check types and keys only: each value's range is checked once, beside the code that uses it
(atarirep.plumbing.checks gathers those checks), and its reference value is in conf/config.yaml alone.

Only stage scripts call `load(section)`; library functions take plain arguments. params.yaml is the
composition of conf/ (DVC's Hydra composition writes it on `dvc exp run`); stages see plain values.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from atarirep.plumbing.errors import UserError


@dataclass(frozen=True)
class Dataset:
    steps: int  # agent steps (stored frames) over all environments
    splits: dict[str, float]  # split name -> fraction of episodes, e.g. {train: 0.8, val: 0.2}


@dataclass(frozen=True)
class Collect:
    seed: int  # shared
    annotations: str  # shared: annotation set, paper or latest
    collect_mode: str  # random_agent, or agent: the first seed's last sampled checkpoint of train_agent
    random_actions: str  # nonzero: actions 1..n-1 as the reference; all: 0..n-1
    agent_random_prob: float  # agent mode: a uniformly random action with this probability
    protocol: str  # environment protocol, atariari
    num_envs: int  # environments, each with its own seed stream
    num_workers: int  # processes stepping them; does not change the output
    min_episode_length: int  # episodes of this many frames or fewer are dropped
    entropy_threshold: float  # variables below this label entropy (nats) are dropped
    pretrain: Dataset  # encoder pretraining data
    probe: Dataset  # probing data

    def dataset(self, name: str) -> Dataset:
        """The `pretrain` or `probe` dataset's settings; UserError for another name."""
        if name not in DATASETS:
            raise UserError(f"dataset {name!r} is unknown; use one of {', '.join(DATASETS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class Pretrain:
    seed: int  # shared
    device: str  # shared: auto, cpu or cuda
    methods: list[str]  # one pretrain stage per method (a DVC matrix)
    epochs: int
    batch_size: int
    lr: float  # Adam
    patience: int  # early stop on validation loss
    keep: str  # last (reference) or best encoder
    sampling: str  # reference (AtariARI: episodes drawn with replacement) or every_frame
    precision: str  # fp32 (reference) or bf16 (autocast on CUDA; no effect on CPU)
    method_config: dict[str, dict]  # method -> its settings (feature_size, CPC offsets, ...)


@dataclass(frozen=True)
class Probe:
    seed: int  # shared
    device: str  # shared
    baselines: list[str]  # majority and supervised need no pretrained encoder
    lr: float  # Adam
    batch_size: int
    epochs: int
    patience: int  # early stop on validation accuracy
    fast: bool  # encode once, all variables' probes as one batched layer (same results)
    supervised_per_variable: bool  # reference: one end-to-end encoder per variable; false: one shared encoder
    supervised_epochs: int  # the supervised baseline's epochs
    sampling: str  # reference (AtariARI: train, val and test drawn by episode) or every_frame
    keep: str  # weights tested: last (reference) or best (best val epoch's)


@dataclass(frozen=True)
class TrainAgent:
    seed: int  # shared: each run's seeds derive from it and the run's own seed
    device: str  # shared
    algo: str  # PPO or IMPALA
    protocol: str  # the training protocol (classic); the checkpoints' ALGO_protocol folder
    seeds: list[int]  # one run per game x seed (a DVC matrix); the checkpoints' SEED folder
    ppo: dict[str, object]  # atarirep.agents.ppo.PPOConfig, checked there
    impala: dict[str, object]  # atarirep.agents.impala.IMPALAConfig, checked there


@dataclass(frozen=True)
class Multitask:
    seed: int  # shared: each run's seeds derive from it and the run's own seed
    device: str  # shared
    algo: str  # IMPALA_PopArt (reference) or IMPALA: one plain value output per game
    games: list[str]  # the games one network plays
    seeds: list[int]  # one run per seed (a DVC matrix); the checkpoints' SEED folder
    full_action_space: bool  # every game plays ALE's 18 actions, so games of other action sets mix
    impala: dict[str, object]  # keys of train_agent.impala set otherwise here (total_steps: 300M, ...)


@dataclass(frozen=True)
class SampleCheckpoints:
    keep: int  # checkpoints kept of each run, by the geometric rule


@dataclass(frozen=True)
class EvaluateAgent:
    seed: int  # shared
    device: str  # shared
    protocols: list[str]  # classic and/or modern (docs/protocols.md 4)
    episodes: int  # games played per checkpoint and protocol
    epsilon: float  # probability of a uniformly random action
    max_steps: int  # agent steps a game may last


@dataclass(frozen=True)
class Saliency:
    seed: int  # shared
    device: str  # shared
    checkpoints: int  # the last this many sampled checkpoints of the first seed
    frames: int  # observations kept from the start of one game
    radius: int  # sigma of the perturbation's Gaussian, in pixels (docs/protocols.md 4: 2 on 84x84)
    stride: int  # pixels between perturbed points (docs/protocols.md 4: 2 on 84x84)
    protocol: str  # evaluation protocol of the game played (classic or modern)
    epsilon: float  # probability of a uniformly random action


@dataclass(frozen=True)
class Report:
    games: list[str]  # shared: the games of the tables, in their order
    annotations: str  # shared: the annotation set probed (decides what vs_paper compares)
    methods: list[str]  # pretrained encoders shown (default: pretrain.methods)
    baselines: list[str]  # baselines shown (default: probe.baselines)
    rl_agent: bool  # show the trained agent's encoder (first seed, last sampled checkpoint)


@dataclass(frozen=True)
class Study:
    """The shared keys: what the whole pipeline covers."""

    env: str  # the single-game study's game (the default profile's `games`)
    games: list[str]  # every game collected, pretrained, probed and reported
    seed: int
    device: str  # auto, cpu or cuda
    annotations: str  # paper or latest
    profile: str  # default or paper


DATASETS = ("pretrain", "probe")
SECTIONS = {
    "collect": Collect,
    "pretrain": Pretrain,
    "probe": Probe,
    "report": Report,
    "study": Study,
    "train_agent": TrainAgent,
    "multitask": Multitask,
    "sample_checkpoints": SampleCheckpoints,
    "evaluate_agent": EvaluateAgent,
    "saliency": Saliency,
}
SHARED_KEYS = ("env", "seed", "annotations", "device", "profile", "games")


def _check_type(value, kind, where: str):
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"params.yaml {where} must be a list, got {value!r}")
        (item_type,) = typing.get_args(kind)
        return [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[X, ...]: a YAML list held immutably
        if not isinstance(value, (list, tuple)):
            raise UserError(f"params.yaml {where} must be a list, got {value!r}")
        item_type = typing.get_args(kind)[0]
        return tuple(_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        if not isinstance(value, dict):
            raise UserError(f"params.yaml {where} must be a mapping, got {value!r}")
        return {
            _check_type(k, key_type, f"{where} key"): _check_type(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"params.yaml {where}={value!r} must be of type {kind.__name__}")
    return value


def _known_fields(cls, mapping, where: str) -> tuple[list[str], dict]:
    """(`cls`'s field names, their types); UserError if `mapping` is not a mapping or has other keys."""
    if not isinstance(mapping, dict):
        raise UserError(f"params.yaml {where} must be a mapping, got {mapping!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise UserError(f"params.yaml {where} has unknown keys {', '.join(unknown)}; known keys are {', '.join(names)}")
    return names, typing.get_type_hints(cls)


def _build(cls, mapping, where: str):
    names, hints = _known_fields(cls, mapping, where)
    missing = [n for n in names if n not in mapping]
    if missing:
        raise UserError(
            f"params.yaml {where} is missing {', '.join(missing)}; "
            "regenerate params.yaml from conf/ (dvc exp run) or add them"
        )
    return cls(**{n: _check_type(mapping[n], hints[n], f"{where}.{n}") for n in names})


def config_from(cls, mapping: dict, where: str):
    """A `cls` (a dataclass whose fields all have defaults, such as an agent's config) with the keys `mapping`
    sets over those defaults: the same checks and one-line errors as a params section, except that a key left
    out keeps its default."""
    _, hints = _known_fields(cls, mapping, where)
    return cls(**{n: _check_type(v, hints[n], f"{where}.{n}") for n, v in mapping.items()})


def load(section: str, path: str | Path = "params.yaml"):
    """Section `section` of params.yaml, with the shared keys it declares, as a frozen dataclass.

    Raises UserError (one line) for a missing file, an unknown key, a missing key or a wrong type.
    """
    if section not in SECTIONS:
        raise UserError(f"no params section {section!r}; known sections are {', '.join(SECTIONS)}")
    path = Path(path)
    try:
        everything = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path} is missing; run stages from the repository root") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    cls = SECTIONS[section]
    fields = {f.name for f in dataclasses.fields(cls)}
    if section not in everything and not fields <= set(SHARED_KEYS):  # study reads shared keys only
        raise UserError(f"{path} has no {section!r} section; add it (see conf/config.yaml)")
    shared = {k: everything[k] for k in SHARED_KEYS if k in fields and k in everything}
    return _build(cls, {**shared, **(everything.get(section) or {})}, section)


def compose(conf_dir: str | Path = "conf", overrides: list[str] | None = None) -> dict:
    """The params that DVC's Hydra composition writes for `conf_dir` and `-S` style `overrides`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        # resolve=True as DVC does when it writes params.yaml: `games: ["${env}"]` becomes `[Pong]`
        composed = OmegaConf.to_container(hydra_compose(config_name="config", overrides=overrides or []), resolve=True)
    assert isinstance(composed, dict)  # a DictConfig's container
    return composed


def main(*argv: str) -> None:
    """python -m atarirep.plumbing.params [OVERRIDE ...]: rewrite params.yaml from conf/."""
    parser = argparse.ArgumentParser(
        prog="python -m atarirep.plumbing.params",
        description="Rewrite params.yaml from conf/ as DVC's Hydra composition does (`dvc exp run -S` overrides).",
    )
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides, e.g. env=Breakout")
    args = parser.parse_args(argv)
    Path("params.yaml").write_text(yaml.safe_dump(compose("conf", args.overrides), sort_keys=False))


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:])
