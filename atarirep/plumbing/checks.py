"""The study a params.yaml describes, checked whole: every section's types, ranges, games and methods.

`check` runs every stage's own validation at once, so that one bad value stops the pipeline in its
first stage, before any stage that writes outputs has started. It does not run anything else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from atarirep import annotations as ram_annotations
from atarirep import collection, envs, methods, pretraining
from atarirep.agents import checkpoints, impala, ppo, saliency, vector_env
from atarirep.games import game_key, resolve_ale_game
from atarirep.plumbing import devices, params
from atarirep.plumbing.errors import UserError
from atarirep.probe import stage as probe_stage
from atarirep.probe.baselines import BASELINES


def _distinct(values: list[str], where: str) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise UserError(f"params.yaml {where} lists {', '.join(repeated)} more than once; list each once")


def _check_seeds(seeds: list[int], where: str) -> None:
    if not seeds or min(seeds) < 0:
        raise UserError(f"params.yaml {where}={seeds} must list seeds >= 0, for example [0]")
    _distinct([str(s) for s in seeds], where)


def check_games(study: params.Study) -> list[str]:
    """The study's games as given, if each is annotated in the study's set, has a ROM, is written as its ALE
    name (stage names and data paths use it) and appears once; UserError naming the first bad one otherwise."""
    known = [envs.resolve_game(key, study.annotations) for key in ram_annotations.annotated_games(study.annotations)]
    for where, game in (("env", study.env), *(("games", g) for g in study.games)):
        if game_key(game) not in map(game_key, known):
            raise UserError(
                f"params.yaml {where} has {game!r}, which has no RAM annotations in the "
                f"{study.annotations!r} set; use one of {', '.join(known)}"
            )
    if not study.games:
        raise UserError("params.yaml games is empty; list at least one game, e.g. games: [Pong]")
    for game in study.games:
        ale_name = envs.resolve_game(game, study.annotations)
        if game != ale_name:
            raise UserError(
                f"params.yaml games has {game!r}; write its ALE name {ale_name!r} (stage names and "
                "data paths are made from it)"
            )
    _distinct(study.games, "games")
    return study.games


def check_methods(pretrain: params.Pretrain, probe: params.Probe, report: params.Report) -> None:
    """UserError unless every method and baseline is known, written canonically, listed once, and every
    method/baseline the report shows is one the pipeline computes."""
    for name in pretrain.methods:
        if methods.canonical_name(name) != name:
            raise UserError(f"params.yaml pretrain.methods has {name!r}; write {methods.canonical_name(name)!r}")
        if name not in pretrain.method_config:
            raise UserError(
                f"params.yaml pretrain.method_config has no entry for {name}; add one (for example "
                "{feature_size: 256})"
            )
    _distinct(pretrain.methods, "pretrain.methods")
    config = pretraining.TrainConfig(
        epochs=pretrain.epochs,
        batch_size=pretrain.batch_size,
        lr=pretrain.lr,
        patience=pretrain.patience,
        keep=pretrain.keep,
        seed=pretrain.seed,
        device=pretrain.device,
        sampling=pretrain.sampling,
        precision=pretrain.precision,
    )
    config.check()
    for name in pretrain.methods:  # builds each method: its method_config must be accepted
        pretraining.build_method(name, pretrain.seed, **pretrain.method_config[name])
    unknown = [b for b in probe.baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"params.yaml probe.baselines has {unknown[0]!r}; use some of {', '.join(BASELINES)}")
    _distinct(probe.baselines, "probe.baselines")
    probe_stage.check_settings(
        method=None,
        lr=probe.lr,
        batch_size=probe.batch_size,
        epochs=probe.epochs,
        patience=probe.patience,
        sampling=probe.sampling,
        keep=probe.keep,
        supervised_epochs=probe.supervised_epochs,
    )
    for shown, computed, where in (
        (report.methods, pretrain.methods, "pretrain.methods"),
        (report.baselines, probe.baselines, "probe.baselines"),
    ):
        missing = [m for m in shown if m not in computed]
        if missing:
            raise UserError(
                f"params.yaml report shows {missing[0]!r}, which {where} does not compute; add it "
                f"there or drop it from the report"
            )


def _misplaced(section: dict, where: str, own: type, others: dict[str, type]) -> None:
    """UserError for a key of `section` that is not `own`'s but another algorithm's: it says where it belongs."""
    fields = {f.name for f in dataclasses.fields(own)}
    for key in section:
        for name, other in others.items():
            if key not in fields and key in {f.name for f in dataclasses.fields(other)}:
                raise UserError(
                    f"params.yaml {where}.{key} is a param of {name}, not of this algorithm; set it "
                    f"under train_agent.{name.lower()} (and train_agent.algo: {name}) or remove it"
                )


def check_agents(
    train: params.TrainAgent,
    sample: params.SampleCheckpoints,
    evaluate: params.EvaluateAgent,
    games: Sequence[str] = (),
    saliency_protocols: tuple[str, ...] = (),
) -> None:
    """UserError unless the agent runs (on each of `games`), the checkpoint sampling and the evaluation are well
    formed."""
    if train.algo not in checkpoints.ALGORITHMS:
        raise UserError(
            f"params.yaml train_agent.algo={train.algo!r} is unknown; use one of {', '.join(checkpoints.ALGORITHMS)}"
        )
    _check_seeds(train.seeds, "train_agent.seeds")
    _misplaced(train.ppo, "train_agent.ppo", ppo.PPOConfig, {"IMPALA": impala.IMPALAConfig})
    _misplaced(train.impala, "train_agent.impala", impala.IMPALAConfig, {"PPO": ppo.PPOConfig})
    configs: dict[str, ppo.PPOConfig | impala.IMPALAConfig] = {
        "PPO": ppo.config_from({**train.ppo, "protocol": train.protocol}),
        "IMPALA": impala.config_from({**train.impala, "protocol": train.protocol}),
    }
    made = len(configs[train.algo].checkpoint_iterations())  # the algorithm that trains makes the checkpoints
    if not 1 <= sample.keep <= made:
        raise UserError(
            f"params.yaml sample_checkpoints.keep={sample.keep} must be between 1 and the {made} "
            f"checkpoints a run makes (train_agent.{train.algo.lower()} total_steps / checkpoint_every); "
            "lower keep"
        )
    for game in games:  # every protocol a game is played under: training, evaluation, saliency
        for protocol in dict.fromkeys([train.protocol, *evaluate.protocols, *saliency_protocols]):
            vector_env.check_game(game, protocol)
    _distinct(evaluate.protocols, "evaluate_agent.protocols")
    if not evaluate.protocols or evaluate.episodes < 1 or evaluate.max_steps < 1 or not 0 <= evaluate.epsilon <= 1:
        raise UserError(
            "params.yaml evaluate_agent needs at least one protocol, episodes >= 1, max_steps >= 1 "
            "and epsilon in [0, 1]"
        )


def check_multitask(train: params.TrainAgent, multitask: params.Multitask, sample: params.SampleCheckpoints) -> None:
    """UserError unless the multi-task runs are well formed: known algo, at least two distinct games written as
    their ALE names (stage names and paths use them) with ROMs and one action count (or full_action_space),
    seeds, a valid IMPALA config, and enough checkpoints for sample_checkpoints.keep."""
    config = impala.multitask_config(
        train.impala,
        multitask.impala,
        algo=multitask.algo,
        protocol=train.protocol,
        games=multitask.games,
        full_action_space=multitask.full_action_space,
    )
    for game in multitask.games:
        ale_name = resolve_ale_game(game)
        if game != ale_name:
            raise UserError(
                f"params.yaml multitask.games has {game!r}; write its ALE name {ale_name!r} (stage "
                "names and data paths are made from it)"
            )
    _distinct(multitask.games, "multitask.games")
    impala.check_games(list(multitask.games), config)
    _check_seeds(multitask.seeds, "multitask.seeds")
    made = len(config.checkpoint_iterations())
    if not 1 <= sample.keep <= made:
        raise UserError(
            f"params.yaml sample_checkpoints.keep={sample.keep} must be between 1 and the {made} "
            "checkpoints a multi-task run makes (multitask.impala total_steps / checkpoint_every); "
            "lower keep or checkpoint more often"
        )


def check(path: str | os.PathLike = "params.yaml") -> params.Study:
    """Every section of `path` loaded and validated; returns the shared keys. UserError (one line) at the
    first problem: a wrong type, an unknown key, a bad range, an unknown game, method or device."""
    path = Path(path)
    study = params.load("study", path)
    if study.device not in devices.DEVICES:
        raise UserError(f"params.yaml device={study.device!r} must be one of {', '.join(devices.DEVICES)}")
    games = check_games(study)
    collect = params.load("collect", path)
    for game in games:
        for purpose in params.DATASETS:
            # agent mode: the checkpoint is sample_checkpoints' output, not made yet
            collection.validate(game, **collection.stage_options(collect, purpose, "made by sample_checkpoints"))
    check_methods(params.load("pretrain", path), params.load("probe", path), params.load("report", path))
    check_agents(
        params.load("train_agent", path),
        params.load("sample_checkpoints", path),
        params.load("evaluate_agent", path),
        games,
        (params.load("saliency", path).protocol,),
    )
    check_multitask(
        params.load("train_agent", path), params.load("multitask", path), params.load("sample_checkpoints", path)
    )
    saliency.check_settings(params.load("saliency", path))
    return study
