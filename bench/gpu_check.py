"""Run every CUDA path of the project once, on a GPU machine lent for a few minutes, and print one JSON object.

Why: GPU time comes rarely and briefly (one short session, no second try to spare), while the project is
developed and tested on CPU. This script is prepared beforehand and checked on CPU (`--device cpu --tiny`), so
the lent minutes go to one run that says which CUDA paths work, how fast the main ones go, and, for whatever
fails, the error type and message, while the other sections still run.

Sections (one function each, each timed, each in its own try/except and under its own time limit):

  ppo       atarirep.agents.ppo.train on Breakout for a few iterations (PPOConfig(total_steps=8*1024)),
            steps/s from its dvclive log (iterations after the first) and from wall time.
  impala    atarirep.agents.impala.train on one game (unrolls of 80, 8 a learner step, a few learner steps),
            then a multi-task PopArt run over Pong and SpaceInvaders (multitask_config, the IMPALA ResNet as
            the reference's multi-task runs); steps/s and learner utilisation from their dvclive logs.
  evaluate  atarirep.agents.evaluation.evaluate with a fresh ActorCritic on the device: 2 episodes, 500 steps.
  saliency  atarirep.agents.saliency.saliency_maps of a few stacks of a played Breakout game, with an ActorCritic
            (its local first-layer path) and a multi-task IMPALANet through one game's view (the whole network
            on every perturbed stack), in batches of 1024 on CUDA as stages/saliency.py uses.
  probing   a tiny Breakout probing dataset (collected as tests/conftest.py's breakout_probe_dir), then on the
            device: the probe stage (atarirep.probe.stage.run) on a saved random encoder, the supervised
            baseline (one shared encoder), and an agent's encoder (atarirep.agents.probing.probe_network).
  pretrain  ST-DIM (atarirep.pretraining.fit) at the paper's batch size (conf/config.yaml pretrain.batch_size,
            64) for one short epoch of the same dataset, in fp32 and in bf16 (pretrain.precision; autocast on
            CUDA only, so on CPU both are fp32): batches/s of each and whether the losses are finite.

Also reported: python, torch and CUDA versions, the device's name and memory, each section's peak CUDA memory,
and the total wall time, after the run's context (bench/report.py: date, commit, machine). The JSON is printed last
on stdout and written to --json (or --out; default $OUT/gpu_check.json when $OUT is set), rewritten after every
section so a run cut short still leaves what it had.

Usage:
    python bench/gpu_check.py                      # on the GPU machine (device cuda); meant to take a few minutes
    python bench/gpu_check.py --device cpu --tiny  # the same paths at the smallest sizes, to check the script
    python bench/gpu_check.py --only ppo impala    # some sections only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import context, finish, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # atarirep from this checkout, installed or not
from atarirep import encoders, episodes, pretraining
from atarirep.agents import evaluation, impala, ppo, saliency
from atarirep.agents import probing as agent_probing
from atarirep.agents.network import ActorCritic, IMPALANet, OneGame
from atarirep.collection import collect
from atarirep.plumbing import devices
from atarirep.probe import stage as probe_stage

GAME = "Breakout"
MULTITASK_GAMES = ["Pong", "SpaceInvaders"]  # 6 actions each, as multitask_config requires
FRAME_SKIP = 4
PAPER_BATCH = 64  # conf/config.yaml pretrain.batch_size
PROBE_DATA = {"steps": 1600, "num_envs": 4, "min_episode_length": 16, "seed": 3}  # tests/conftest.py SMALL_BREAKOUT

# Sizes of each section: the GPU run's, and --tiny's (the smallest that still runs every path).
SIZES = {
    "full": {
        "ppo": {"total_steps": 8 * 1024, "checkpoint_every": 4096},
        "impala": {"total_steps": 6 * 80 * 8, "unroll_length": 80, "batch_size": 8, "num_actors": 8},
        "multitask": {
            "total_steps": 4 * 80 * 8,
            "unroll_length": 80,
            "batch_size": 8,
            "num_actors": 4,
            "architecture": "impala",
        },
        "evaluate": {"episodes": 2, "max_steps": 500},
        "saliency": {"frames": 8, "stride": 2, "batch_size": 1024},
        "probe": {"epochs": 5, "supervised_epochs": 2},
        "pretrain": {"batch_size": PAPER_BATCH, "log_every": 5},
    },
    "tiny": {
        "ppo": {"total_steps": 2 * 256, "num_envs": 2, "num_steps": 128, "checkpoint_every": 256},
        "impala": {"total_steps": 2 * 8 * 2, "unroll_length": 8, "batch_size": 2, "num_actors": 2},
        "multitask": {
            "total_steps": 2 * 8 * 2,
            "unroll_length": 8,
            "batch_size": 2,
            "num_actors": 2,
            "architecture": "impala",
        },
        "evaluate": {"episodes": 2, "max_steps": 100},
        "saliency": {"frames": 2, "stride": 6, "batch_size": 256},
        "probe": {"epochs": 2, "supervised_epochs": 1},
        "pretrain": {"batch_size": 16, "log_every": 5},
    },
}
# Seconds each section may take on CUDA before it is stopped (SectionTimeout) and the next one starts: together
# (395 s) under the 8 minutes the GPU run must fit in, whatever hangs. On CPU (a check of the script on a small,
# busy machine) each is CPU_TIME_FACTOR times longer.
TIME_LIMITS = {"ppo": 75, "impala": 120, "evaluate": 40, "saliency": 40, "probing": 60, "pretrain": 60}
CPU_TIME_FACTOR = 4


# -- helpers ----------------------------------------------------------------------------------------------
class SectionTimeout(Exception):
    """A section ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise SectionTimeout in this (the main) thread after `seconds`; the section's own `finally`s still run."""

    def expire(signum, frame):
        raise SectionTimeout(f"stopped after its time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def charts(log_dir: Path, name: str) -> pd.Series:
    """One dvclive metric of an agent run (charts/<name>.tsv) by step."""
    table = pd.read_csv(log_dir / "plots/metrics/charts" / f"{name}.tsv", sep="\t")
    return table.set_index("step")[name]


def steady_rate(per_step: pd.Series, steps_per_row: int) -> float | None:
    """Agent steps per second over the logged iterations after the first (warm-up: CUDA init, the first batch):
    their steps over the sum of their durations; all of them when there is only one."""
    rows = per_step.iloc[1:] if len(per_step) > 1 else per_step
    return round(float(steps_per_row * len(rows) / (steps_per_row / rows).sum()), 1) if len(rows) else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_finite(values) -> bool:
    return bool(np.isfinite(np.asarray(list(values), np.float64)).all())


# -- sections ---------------------------------------------------------------------------------------------
def check_ppo(device: str, sizes: dict, tmp: Path) -> dict:
    config = ppo.PPOConfig(**sizes["ppo"])
    started = time.perf_counter()
    ppo.train(GAME, 0, tmp / "ppo/out", tmp / "ppo/logs", config, device=device, progress=False)
    wall = time.perf_counter() - started
    steps_per_s = charts(tmp / "ppo/logs", "steps_per_s")
    losses = [
        v for f in (tmp / "ppo/logs/plots/metrics/losses").glob("*.tsv") for v in pd.read_csv(f, sep="\t").iloc[:, 1]
    ]
    return {
        "iterations": config.iterations,
        "agent_steps": config.iterations * config.batch_size,
        "steps_per_s_log": steady_rate(steps_per_s, config.batch_size),
        "frames_per_s_log": round(FRAME_SKIP * (steady_rate(steps_per_s, config.batch_size) or 0), 1),
        "steps_per_s_wall": round(config.iterations * config.batch_size / wall, 1),
        "checkpoints": len(list((tmp / "ppo/out").glob("*.gz"))),
        "losses_finite": is_finite(losses) if losses else None,
    }


def _impala_run(games, config: impala.IMPALAConfig, device: str, folder: Path, algo: str) -> dict:
    started = time.perf_counter()
    impala.train(games, 0, folder / "out", folder / "logs", config, device=device, algo=algo, progress=False)
    wall = time.perf_counter() - started
    steps_per_s = charts(folder / "logs", "steps_per_s")
    utilisation = charts(folder / "logs", "learner_utilisation")
    total = pd.read_csv(folder / "logs/plots/metrics/losses/total.tsv", sep="\t")["total"]
    return {
        "games": [games] if isinstance(games, str) else list(games),
        "learner_steps": config.iterations,
        "agent_steps": config.iterations * config.steps_per_update,
        "num_actors": config.num_actors,
        "architecture": config.architecture,
        "popart": config.uses_popart(len(config.games) or 1),
        "steps_per_s_log": steady_rate(steps_per_s, config.steps_per_update),
        "steps_per_s_wall_with_start": round(config.iterations * config.steps_per_update / wall, 1),
        "learner_utilisation": round(
            float(utilisation.iloc[1:].mean() if len(utilisation) > 1 else utilisation.mean()), 3
        ),
        "checkpoints": len(list((folder / "out").glob("*.gz"))),
        "loss_finite": is_finite(total),
    }


def check_impala(device: str, sizes: dict, tmp: Path) -> dict:
    single = sizes["impala"]
    config = impala.IMPALAConfig(**single, checkpoint_every=single["total_steps"])
    out = {"single": _impala_run(GAME, config, device, tmp / "impala", "IMPALA")}
    multi = sizes["multitask"]
    base = {k: v for k, v in multi.items() if k != "architecture"}
    mt_config = impala.multitask_config(
        {**base, "checkpoint_every": multi["total_steps"]},
        {"architecture": multi["architecture"]},
        algo="IMPALA_PopArt",
        protocol="classic",
        games=MULTITASK_GAMES,
        full_action_space=False,
    )
    try:  # a failure here is reported beside the single-game result, not instead of it
        out["multitask_popart"] = _impala_run(MULTITASK_GAMES, mt_config, device, tmp / "multitask", "IMPALA_PopArt")
    except SectionTimeout:
        raise
    except Exception as err:  # noqa: BLE001 (reported beside the single-game run)
        traceback.print_exc()
        out["ok"] = False
        out["multitask_popart"] = {"ok": False, "error": describe(err)}
    return out


def check_evaluate(device: str, sizes: dict, tmp: Path) -> dict:
    dev = devices.resolve(device)
    torch.manual_seed(0)
    network = ActorCritic(4).to(dev, memory_format=torch.channels_last).eval()  # Breakout: 4 actions
    size = sizes["evaluate"]
    started = time.perf_counter()
    returns = evaluation.evaluate(
        network, GAME, "classic", episodes=size["episodes"], epsilon=0.001, max_steps=size["max_steps"], seed=0
    )
    wall = time.perf_counter() - started
    return {
        "episodes": size["episodes"],
        "max_steps": size["max_steps"],
        "returns": returns,
        "returns_finite": is_finite(returns),
        "wall_s": round(wall, 2),
    }


def check_saliency(device: str, sizes: dict, tmp: Path) -> dict:
    dev = devices.resolve(device)
    size = sizes["saliency"]
    torch.manual_seed(0)
    network = ActorCritic(4).eval()
    stacks = saliency.episode_stacks(network, GAME, "classic", frames=size["frames"], epsilon=0.001, seed=0)
    out = {
        "stacks": len(stacks),
        "radius": saliency.DEFAULT_RADIUS,
        "stride": size["stride"],
        "batch_size": size["batch_size"],
    }
    multi = OneGame(IMPALANet(6, 2, "impala", popart=True, last_action_reward=True), task=1)  # not local
    for name, net in (("actor_critic", network), ("impala_multitask", multi)):
        net = net.to(dev).eval()
        saliency.saliency_maps(net, stacks[:1], saliency.DEFAULT_RADIUS, size["stride"], size["batch_size"])  # warm-up
        synchronize(dev)
        started = time.perf_counter()
        policy, value = saliency.saliency_maps(net, stacks, saliency.DEFAULT_RADIUS, size["stride"], size["batch_size"])
        synchronize(dev)
        seconds = time.perf_counter() - started
        out[name] = {
            "s_per_frame": round(seconds / len(stacks), 4),
            "shape": list(policy.shape),
            "finite": bool(np.isfinite(policy).all() and np.isfinite(value).all()),
            "policy_max": float(policy.max()),
            "value_max": float(value.max()),
        }
    return out


def probe_dataset(tmp: Path) -> Path:
    """The tiny Breakout probing dataset (70/10/20) both probing and pretraining read; collected once."""
    folder = tmp / "breakout_probe"
    if not folder.exists():
        collect(GAME, folder, splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2}, purpose="probe", **PROBE_DATA)
    return folder


def check_probing(device: str, sizes: dict, tmp: Path) -> dict:
    started = time.perf_counter()
    data_dir = probe_dataset(tmp)
    out = {"collect_s": round(time.perf_counter() - started, 2)}
    game, data = probe_stage.load_probe_data(data_dir)
    out["frames"] = {name: len(split) for name, split in data.items()}
    out["variables"] = len(data["train"].variables)
    settings = {
        "lr": 3e-4,
        "batch_size": 64,
        "epochs": sizes["probe"]["epochs"],
        "patience": 15,
        "seed": 0,
        "device": device,
    }

    torch.manual_seed(0)
    encoder_path = tmp / "random_cnn.pt"
    encoders.save(encoders.build("benchmark"), encoder_path, method="random_cnn", game=game)
    for method, path, extra in (
        ("random_cnn", encoder_path, {}),
        (
            "supervised",
            None,
            {"supervised_per_variable": False, "supervised_epochs": sizes["probe"]["supervised_epochs"]},
        ),
    ):
        started = time.perf_counter()
        scores = probe_stage.run(data_dir, path, tmp / "probes" / method, method=method, **settings, **extra)
        out[method] = {
            "wall_s": round(time.perf_counter() - started, 2),
            "mean_f1": round(float(scores["f1"].mean()), 4),
            "f1_finite": is_finite(scores["f1"]),
        }

    started = time.perf_counter()
    torch.manual_seed(0)
    scores = agent_probing.probe_network(ActorCritic(4), data, game=game, **settings)
    out["rl_agent"] = {
        "wall_s": round(time.perf_counter() - started, 2),
        "mean_f1": round(float(scores["f1"].mean()), 4),
        "f1_finite": is_finite(scores["f1"]),
    }
    return out


def check_pretrain(device: str, sizes: dict, tmp: Path) -> dict:
    store = episodes.load(probe_dataset(tmp))
    train, val = store.split("train"), store.split("val")
    size = sizes["pretrain"]
    out = {"method": "stdim", "batch_size": size["batch_size"], "train_frames": len(train)}
    for precision in ("fp32", "bf16"):
        method = pretraining.build_method("stdim", seed=0, feature_size=256)
        config = pretraining.TrainConfig(
            epochs=1, batch_size=size["batch_size"], seed=0, device=device, precision=precision
        )
        started = time.perf_counter()
        result = pretraining.fit(method, train, val, config, loader="resident", log_every=size["log_every"])
        wall = time.perf_counter() - started
        windows = result.steps[1:] if len(result.steps) > 1 else result.steps  # the first holds the warm-up
        row = result.history[-1]
        out[precision] = {
            "batches": row["step"],
            "batches_per_s": round(float(np.mean([w["samples_per_s"] for w in windows])) / size["batch_size"], 2),
            "batches_per_s_epoch": round(row["samples_per_s"] / size["batch_size"], 2),
            "train_loss": row["train_loss"],
            "val_loss": row["val_loss"],
            "losses_finite": is_finite([row["train_loss"], row["val_loss"], *(w["loss"] for w in result.steps)]),
            "autocast": devices.resolve(device).type == "cuda" and precision == "bf16",
            "wall_s": round(wall, 2),
        }
    return out


SECTIONS = {
    "ppo": check_ppo,
    "impala": check_impala,
    "evaluate": check_evaluate,
    "saliency": check_saliency,
    "probing": check_probing,
    "pretrain": check_pretrain,
}


# -- the run ----------------------------------------------------------------------------------------------
def describe(err: BaseException) -> dict:
    """The error's type, message, and the line it came from (for a timeout, the line it interrupted)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.name != "expire"]
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}: {frames[-1].line}" if frames else ""
    return {"type": type(err).__name__, "message": str(err)[:2000], "where": where[-600:]}


def environment(device: str) -> dict:
    """What the run's context (report.context: machine, python, torch, the GPU's name) leaves out."""
    info = {
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


def run_section(name: str, device: str, sizes: dict, tmp: Path, limit: int) -> dict:
    dev = devices.resolve(device) if device != "cuda" or torch.cuda.is_available() else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    started = time.perf_counter()
    try:
        with time_limit(limit):
            result = {"ok": True, **SECTIONS[name](device, sizes, tmp)}
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        traceback.print_exc()
        result = {"ok": False, "error": describe(err)}
    result["wall_s"] = round(time.perf_counter() - started, 2)
    if dev is not None and dev.type == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=devices.DEVICES)
    parser.add_argument("--tiny", action="store_true", help="the smallest sizes (a check of the script on CPU)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections only")
    parser.add_argument(
        "--json",
        "--out",
        type=Path,
        metavar="PATH",
        default=Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None,
        help="also write the JSON here",
    )
    args = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sizes = SIZES["tiny" if args.tiny else "full"]
    started = time.perf_counter()
    # the context first, so that the file written after each section has it too
    report = {
        **context(),
        "sizes": "tiny" if args.tiny else "full",
        "environment": environment(args.device),
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in args.only or SECTIONS:
            print(f"== {name}", file=sys.stderr, flush=True)
            limit = TIME_LIMITS[name] * (1 if args.device == "cuda" else CPU_TIME_FACTOR)
            report["sections"][name] = run_section(name, args.device, sizes, Path(tmp), limit)
            report["total_wall_s"] = round(time.perf_counter() - started, 1)
            write_json(report, args.json)
    report["all_ok"] = all(section["ok"] for section in report["sections"].values())
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    finish(report, args.json)


if __name__ == "__main__":
    main()
