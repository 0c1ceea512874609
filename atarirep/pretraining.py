"""The one pretraining loop: optimise any method's `loss(batch)` on episodes, resumably, on CPU, CUDA or DDP.

`pretrain` is the stage's library function (episodes folder in, encoder file and dvclive training log out);
`fit` is the loop itself. Losses live in atarirep.methods, networks in atarirep.encoders; this module
reads no params file (the stage passes plain arguments).

Samples: a method needs `window` consecutive frames of ONE episode per sample (2 for ST-DIM pairs,
the sequence length for CPC); `windows` lists every such place, so no sample crosses an episode
boundary. An epoch (atarirep.sampling) is AtariARI's draw, one sample per frame of the split (CPC: its
sequence length per episode), each from an episode chosen with replacement and a window inside it
(`reference`), or one pass over the windows in a seeded order (`every_frame`); the last partial batch is
dropped. Validation draws anew each epoch (reference) or uses the same batches every epoch (every_frame).

Frames: a stored dataset's frames are streamed by default, held compressed one frame per zlib stream
(episodes.CompressedFrames, ~30-120x smaller) and decompressed batch by batch in a background thread,
so memory does not grow with the dataset; "resident" decompresses them all up front (into GPU memory
on CUDA when they fit, the default there).

Early stopping: on the val loss, or on a val metric (higher is better) named by the method's
`early_stop_metric` class attribute (e.g. "accuracy", which its loss() then returns in its metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from atarirep import encoders, methods, seeds
from atarirep import episodes as episodes_lib
from atarirep import sampling as sampling_lib
from atarirep.episodes import CompressedFrames, Episodes, LazyFrames
from atarirep.methods import Batch
from atarirep.methods.base import Method
from atarirep.plumbing import devices, resume
from atarirep.plumbing.atomic import atomic_dir, write_json
from atarirep.plumbing.errors import UserError
from atarirep.plumbing.live import StageLive

KEEP = ("last", "best")
LOADERS = ("auto", "resident", "streamed")
LOG_EVERY = 10  # optimizer steps per point of the step log (a 255-step epoch draws 26 points)
CHECKPOINT_FORMAT = "atarirep-pretrain-checkpoint/3"  # /3: history rows hold "step"; the step log
LIVE_DIR = "live"  # pretrain's dvclive folder inside out_dir
LIVE_PLOTS = ("train/loss", "val/loss")  # the curves dvc.yaml plots; written even if empty


@dataclass(frozen=True)
class TrainConfig:
    """How the loop optimises; the defaults are AtariARI's (docs/protocols.md 3)."""

    epochs: int = 100  # passes over the train split's samples
    batch_size: int = 64  # samples per step and process; InfoNCE negatives are the batch's other samples
    lr: float = 3e-4  # Adam learning rate (eps 1e-5)
    patience: int = 15  # stop after this many epochs without a better val loss (or early_stop_metric)
    keep: str = "last"  # encoder returned: the last epoch's (AtariARI) or the best val epoch's
    seed: int = 0  # model init, sample order, negatives, noise
    device: str = "auto"  # auto | cpu | cuda
    sampling: str = "reference"  # reference (AtariARI's draw by episode) | every_frame (atarirep.sampling)
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA)

    def check(self) -> None:
        """Every range of the config, each checked here once: UserError "pretrain.key must be ...; set it to ..."."""

        def bad(name: str, rule: str) -> NoReturn:
            raise UserError(
                f"pretrain.{name} must be {rule}, not {getattr(self, name)!r}; set it to {getattr(TrainConfig, name)!r}"
            )

        for name in ("epochs", "batch_size", "patience", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                bad(name, "an integer")
        if self.epochs < 0:
            bad("epochs", "at least 0")
        if self.batch_size < 2:
            bad("batch_size", "at least 2 (contrastive losses need negatives)")
        if self.patience < 1:
            bad("patience", "at least 1")
        if not isinstance(self.lr, (int, float)) or not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", "a positive number")
        if self.keep not in KEEP:
            bad("keep", f"one of {', '.join(KEEP)}")
        if self.device not in devices.DEVICES:
            bad("device", f"one of {', '.join(devices.DEVICES)}")
        sampling_lib.check(self.sampling, "pretrain sampling")
        devices.check_precision(self.precision, "pretrain precision")


@dataclass(frozen=True)
class Windows:
    """Every place a `window`-frame sample fits inside one episode, as rows of an Episodes."""

    starts: np.ndarray  # (S,) int64 row of each sample's first frame
    episode_start: np.ndarray  # (S,) int64 first row of the sample's episode
    episode_length: np.ndarray  # (S,) int64 frames in the sample's episode
    window: int
    bounds: np.ndarray  # (E + 1,) int64 first window of each episode, then S (atarirep.sampling's bounds)
    num_frames: int  # frames in the split

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def num_episodes(self) -> int:
        """Episodes that hold at least one window."""
        return int((np.diff(self.bounds) > 0).sum())

    def rows(self, samples: np.ndarray) -> np.ndarray:
        """(len(samples), window) int64: the frame rows of the given samples, t, t + 1, ..."""
        return self.starts[samples, None] + np.arange(self.window)


def windows(episodes: Episodes, window: int) -> Windows:
    """All windows of `window` consecutive frames that stay inside one episode (never wrap, never cross)."""
    bounds = episodes.episode_bounds()
    lengths = np.diff(bounds)
    counts = np.maximum(lengths - window + 1, 0)  # windows per episode
    episode_of = np.repeat(np.arange(len(lengths)), counts)  # (S,)
    first = np.repeat(bounds[:-1], counts)
    offsets = np.arange(len(episode_of)) - np.repeat(np.cumsum(counts) - counts, counts)
    return Windows(
        starts=(first + offsets).astype(np.int64),
        episode_start=first.astype(np.int64),
        episode_length=lengths[episode_of].astype(np.int64),
        window=window,
        bounds=np.r_[0, np.cumsum(counts)].astype(np.int64),
        num_frames=int(bounds[-1]),
    )


def epoch_size(windows_: Windows, sampling: str, sample_stride: int = 1, samples_per_episode: int | None = None) -> int:
    """Samples an epoch draws: every_frame, len(windows) // sample_stride (a stride of the window length
    visits each frame about once); reference, one per frame of the split, or `samples_per_episode` per
    episode that holds a window (AtariARI's CPC: len(episodes) x sequence_length)."""
    if sampling == "every_frame":
        return len(windows_) // sample_stride
    if samples_per_episode is not None:
        return samples_per_episode * windows_.num_episodes
    return windows_.num_frames


def epoch_plan(
    windows_: Windows,
    rng: np.random.Generator,
    batch_size: int,
    uses_negatives: bool,
    place: devices.Distributed,
    sample_stride: int = 1,
    sampling: str = "every_frame",
    samples_per_episode: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """This process's (frame rows (B, W), negative rows (B,) or None) for each step of one epoch.

    `epoch_size` windows: without replacement in a seeded order (every_frame), or AtariARI's draw of an
    episode with replacement and a window inside it (reference). All processes draw the same global
    order, then take their own slice of each global batch.
    """
    order = sampling_lib.epoch_order(
        rng, windows_.bounds, sampling, num_samples=epoch_size(windows_, sampling, sample_stride, samples_per_episode)
    )
    negatives = None
    if uses_negatives:  # a uniformly random frame of the same episode (may be t itself, as in AtariARI)
        negatives = windows_.episode_start[order] + rng.integers(0, windows_.episode_length[order])
    global_batch = batch_size * place.world_size
    plan = []
    for step in range(len(order) // global_batch):
        mine = slice(step * global_batch + place.rank * batch_size, step * global_batch + (place.rank + 1) * batch_size)
        plan.append((windows_.rows(order[mine]), None if negatives is None else negatives[mine]))
    return plan


def _resident_tensor(
    frames: np.ndarray | LazyFrames | CompressedFrames, device: torch.device, block_frames: int = 4096
) -> torch.Tensor:
    """(N, C, 210, 160) uint8 on `device`; an in-memory array on CPU is used without a copy, anything else is
    filled block by block, so host memory holds one block at a time on the way to a GPU."""
    if isinstance(frames, np.ndarray):
        return torch.from_numpy(frames).to(device)
    out = torch.empty(tuple(frames.shape), dtype=torch.uint8, device=device)
    for start in range(0, len(frames), block_frames):
        out[start : start + block_frames] = torch.from_numpy(np.asarray(frames[start : start + block_frames]))
    return out


class _FrameSource:
    """Where batches are gathered from: `resident` uint8 frames on the device (host RAM on CPU, GPU memory on
    CUDA), or `streamed` CompressedFrames in host memory, each batch decompressed by a background thread
    ahead of the step (into pinned memory for a GPU), so the working set is a few batches."""

    def __init__(self, frames: np.ndarray | LazyFrames | CompressedFrames, device: torch.device, is_streamed: bool):
        self.device = device
        self.is_streamed = is_streamed
        self.frames: torch.Tensor | CompressedFrames
        if is_streamed:
            self.frames = frames if isinstance(frames, CompressedFrames) else CompressedFrames(frames)
        else:
            self.frames = _resident_tensor(frames, device)
        self.memory_format = devices.memory_format(device)

    def _gather(self, rows: np.ndarray, negatives: np.ndarray | None) -> torch.Tensor:
        """uint8 (B W [+ B], C, 210, 160): the rows' frames, then the negatives'."""
        index = np.concatenate([rows.reshape(-1), [] if negatives is None else negatives]).astype(np.int64)
        if isinstance(self.frames, torch.Tensor):  # resident
            return self.frames.index_select(0, torch.from_numpy(index).to(self.frames.device))
        out = torch.empty(
            (len(index), *self.frames.shape[1:]), dtype=torch.uint8, pin_memory=self.device.type == "cuda"
        )
        self.frames.read_into(index, out.numpy())
        return out

    def _batch(self, gathered: torch.Tensor, shape: tuple[int, int], generator) -> Batch:
        frames = encoders.preprocess(gathered.to(self.device, non_blocking=True))  # (B W [+ B], C, 210, 160)
        frames = frames.contiguous(memory_format=self.memory_format)
        b, w = shape
        negatives = frames[b * w :] if len(frames) > b * w else None
        return Batch(frames[: b * w].view(b, w, *frames.shape[1:]), negatives, generator)

    def batches(self, plan, generator: torch.Generator):
        """Yield a Batch per step of `plan`."""
        if not self.is_streamed:
            for rows, negatives in plan:
                yield self._batch(self._gather(rows, negatives), rows.shape, generator)
            return
        ready: queue.Queue = queue.Queue(maxsize=3)
        stop = threading.Event()

        def work():
            try:
                for rows, negatives in plan:
                    if stop.is_set():
                        return
                    ready.put(self._gather(rows, negatives))
            except BaseException as err:  # re-raised in the training thread, which would otherwise wait forever
                ready.put(err)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            for rows, _ in plan:
                gathered = ready.get()
                if isinstance(gathered, BaseException):
                    raise gathered
                yield self._batch(gathered, rows.shape, generator)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(0.01)


def _is_streamed(loader: str, frames: dict, device: torch.device) -> bool:
    """The `loader` choice for these frames; "auto": on CPU, stream what is stored on disk (an array given in
    memory stays resident); on CUDA, keep resident in GPU memory when all fit in half the free memory."""
    if loader not in LOADERS:
        raise UserError(f"pretrain loader={loader!r} is invalid; it must be one of {', '.join(LOADERS)}")
    if loader != "auto":
        return loader == "streamed"
    if device.type == "cuda":
        num_bytes = sum(len(f) * episodes_lib.FRAME_BYTES for f in frames.values())
        return num_bytes > devices.free_bytes(device) // 2
    return not all(isinstance(f, np.ndarray) for f in frames.values())


class Objective(nn.Module):
    """method.loss as a forward(), so DistributedDataParallel sees the call and averages gradients."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: Batch):
        return self.method.loss(batch)


def build_method(name: str, seed: int, **method_config) -> Method:
    """methods.make(name, **method_config) with weights drawn from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        seeds.torch_weights(seed)
        return methods.make(name, **method_config)


@dataclass
class FitResult:
    method: Method  # trained; method.encoder holds the kept weights
    history: list[dict]  # one row per epoch: epoch, step (optimizer steps so far), train_loss, val_loss,
    # samples_per_s, val_<metric> of early_stop_metric, train_<metric> means
    kept_epoch: int  # epoch whose encoder is kept (0: untrained)
    best_val_loss: float  # the lowest val loss of any epoch
    stopped_early: bool
    early_stop_metric: str = "loss"  # what early stopping and keep=best compared: "loss" or a val metric
    best_val_metric: float = math.nan  # its best value (lowest loss or highest metric)
    steps: list[dict] = field(default_factory=list)  # the step log: one point every log_every optimizer steps
    # and at each epoch's end: step, epoch, loss, samples_per_s


def early_stop_metric(method: Method) -> str:
    """The val figure early stopping watches: "loss" (lower is better) unless the method's class names one of
    its metrics in `early_stop_metric` (higher is better; AtariARI stops CPC and JSD-ST-DIM on val accuracy)."""
    return getattr(method, "early_stop_metric", "loss")


def _is_better(value: float, best: float, metric: str) -> bool:
    if math.isnan(value):
        return False
    return value < best if metric == "loss" else value > best


def _state_to_cpu(module: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fit(
    method: Method,
    train: Episodes,
    val: Episodes,
    config: TrainConfig,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    fingerprint: str = "",
    progress: bool = False,
    loader: str = "auto",
    log_every: int = LOG_EVERY,
) -> FitResult:
    """Train `method` (built with `build_method`) on `train`, early-stopping on the val loss or the method's
    `early_stop_metric`.

    Adam (lr, eps 1e-5), `config.batch_size` samples per step and process. After every epoch a
    checkpoint (method and optimizer weights, RNG states, epoch, history) replaces `checkpoint_path`
    atomically; a run given a checkpoint with the same `fingerprint` and config resumes from it and
    ends, on CPU, with the same weights as an uninterrupted run. Under torchrun each process takes
    its slice of every global batch and gradients are averaged (DDP).
    `loader`: "auto", "resident" (every frame decompressed up front) or "streamed" (frames held compressed,
    decompressed per batch in a background thread); see _is_streamed.
    `log_every`: optimizer steps per point of the step log (FitResult.steps): the mean train loss and the
    samples/s of the steps since the previous point, also taken at each epoch's last step (so validation time
    never counts and a resumed run logs the same steps as a straight one).
    Raises UserError if a split has fewer than batch_size samples of the method's window.
    """
    config.check()
    if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
        raise UserError(f"pretrain log_every={log_every!r} is invalid; it must be an integer >= 1")
    place, device = devices.init_distributed(devices.resolve(config.device))
    log = (lambda message: print(message, file=sys.stderr)) if place.is_main else (lambda message: None)
    if not method.is_trainable or config.epochs == 0:
        return FitResult(method, [], 0, math.nan, False)

    split_windows, stride = {}, getattr(method, "sample_stride", 1)
    per_episode = getattr(method, "samples_per_episode", None)
    for name, split in (("train", train), ("val", val)):
        split_windows[name] = windows(split, method.window)
        num_samples = epoch_size(split_windows[name], config.sampling, stride, per_episode)
        if len(split_windows[name]) == 0 or num_samples < config.batch_size * place.world_size:
            longest = int(np.diff(split.episode_bounds()).max(initial=0))
            if config.sampling == "reference" and per_episode is not None and len(split_windows[name]):
                fix = (
                    f"under sampling: reference each of its {split_windows[name].num_episodes} episodes gives "
                    f"{per_episode} samples; collect more steps (more episodes), lower pretrain batch_size, or "
                    "set pretrain.sampling: every_frame"
                )
            else:
                fix = "lower pretrain batch_size (or the method's sequence length) or collect more steps"
            raise UserError(
                f"the {name} split has {num_samples} samples of {method.window} "
                f"consecutive frames (longest episode: {longest} frames), fewer than one batch of "
                f"{config.batch_size * place.world_size}; {fix}"
            )
    frames = {"train": train.frames, "val": val.frames}
    is_streamed = _is_streamed(loader, frames, device)
    sources = {name: _FrameSource(f, device, is_streamed) for name, f in frames.items()}
    metric = early_stop_metric(method)

    devices.place(method, device)
    model = devices.wrap(Objective(method), place, device)
    # eps 1e-5 as AtariARI's trainers; a method may name its own (its CPC trainer keeps torch's 1e-8)
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, eps=getattr(method, "adam_eps", 1e-5))
    sampling_rng = seeds.pretraining(config.seed)
    noise = seeds.pretraining_noise(config.seed, place.rank, device)
    # `epochs` is left out: a longer run resumes a shorter one's checkpoint (no LR schedule depends on it).
    fingerprint = resume.fingerprint(
        {
            "config": {**dataclasses.asdict(config), "epochs": None},
            "world_size": place.world_size,
            "device": device.type,
            "data": fingerprint,
        }
    )
    history, steps, best_val_loss = [], [], math.inf
    best: dict[str, Any] = {"value": math.inf if metric == "loss" else -math.inf, "epoch": 0, "encoder": None}
    start_epoch, bad_epochs, is_finished = 0, 0, False
    checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
    state = None
    if checkpoint_path is not None:
        state = resume.read(checkpoint_path, CHECKPOINT_FORMAT, fingerprint, start="epoch 0", log=log)
    if state is not None:
        log(f"resuming from {checkpoint_path} after epoch {state['epoch']}")
    if state is not None and state["epoch"] > config.epochs:
        log(f"ignoring checkpoint {checkpoint_path}: it is past epoch {config.epochs}; starting from epoch 0")
        state = None
    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        sampling_rng.bit_generator.state = state["rng"]["sampling"]
        noise.set_state(state["rng"]["noise"][place.rank])
        history, steps, best, bad_epochs = state["history"], state["steps"], state["best"], state["bad_epochs"]
        best_val_loss = min((row["val_loss"] for row in history), default=math.inf)
        start_epoch = state["epoch"]
        is_finished = bad_epochs >= config.patience or start_epoch >= config.epochs

    def val_plan(epoch: int):
        """every_frame: the same batches every epoch, so epochs compare on equal terms; reference: a fresh draw
        each epoch, as AtariARI, from a stream of the epoch's own (a resumed run draws the same)."""
        return epoch_plan(
            split_windows["val"],
            seeds.validation_plan(config.seed, None if config.sampling == "every_frame" else epoch),
            config.batch_size,
            method.uses_negatives,
            place,
            stride,
            config.sampling,
            per_episode,
        )

    samples_per_step = config.batch_size * place.world_size
    global_step = history[-1]["step"] if history else 0  # optimizer steps taken so far
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if is_finished:
            break
        method.train()
        plan = epoch_plan(
            split_windows["train"],
            sampling_rng,
            config.batch_size,
            method.uses_negatives,
            place,
            stride,
            config.sampling,
            per_episode,
        )
        bar = tqdm(
            total=len(plan),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="step",
            leave=False,
            disable=not (progress and place.is_main),
            file=sys.stderr,
        )
        metric_sums: dict[str, torch.Tensor]
        loss_sum, metric_sums, started = torch.zeros((), device=device), {}, time.perf_counter()
        window_sum, window_steps, window_started = torch.zeros((), device=device), 0, started
        for step, batch in enumerate(sources["train"].batches(plan, noise), start=1):
            with devices.autocast(device, config.precision):
                loss, metrics = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            loss_sum += loss.detach().float()
            window_sum += loss.detach().float()
            window_steps += 1
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + value.float().to(device)
            bar.update()
            if global_step % log_every == 0 or step == len(plan):  # .item() waits for the GPU: not every step
                now = time.perf_counter()
                steps.append(
                    {
                        "step": global_step,
                        "epoch": epoch,
                        "loss": devices.all_mean(window_sum.item() / window_steps, place, device),
                        "samples_per_s": window_steps * samples_per_step / (now - window_started),
                    }
                )
                window_sum.zero_()
                window_steps, window_started = 0, now
                bar.set_postfix(
                    loss=f"{loss_sum.item() / step:.4f}",
                    samples_per_s=f"{step * samples_per_step / (now - started):.0f}",
                )
        bar.close()
        seconds = time.perf_counter() - started
        val_metrics = _validate(method, sources["val"], val_plan(epoch), device, place, config.seed, config.precision)
        if metric not in val_metrics:
            raise ValueError(
                f"{type(method).__name__}.early_stop_metric is {metric!r}, which its loss() "
                f"does not return (it returns {', '.join(sorted(val_metrics))})"
            )
        row = {
            "epoch": epoch,
            "step": global_step,
            "train_loss": devices.all_mean(loss_sum.item() / len(plan), place, device),
            "val_loss": val_metrics["loss"],
            "samples_per_s": len(plan) * samples_per_step / seconds,
        }
        if metric != "loss":
            row[f"val_{metric}"] = val_metrics[metric]
        row.update(
            {
                f"train_{k}": devices.all_mean(float(v) / len(plan), place, device)
                for k, v in sorted(metric_sums.items())
            }
        )
        history.append(row)
        best_val_loss = min(best_val_loss, row["val_loss"])
        if _is_better(val_metrics[metric], best["value"], metric):
            bad_epochs = 0
            best = {
                "value": val_metrics[metric],
                "epoch": epoch,
                "encoder": _state_to_cpu(method.encoder) if config.keep == "best" else None,
            }
        else:
            bad_epochs += 1
        is_finished = bad_epochs >= config.patience or epoch == config.epochs
        log(
            f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            + (f"val_{metric} {val_metrics[metric]:.4f} " if metric != "loss" else "")
            + f"samples/s {row['samples_per_s']:.1f}"
            + (" (early stop)" if bad_epochs >= config.patience else "")
        )
        if checkpoint_path is not None:
            _write_checkpoint(
                checkpoint_path,
                fingerprint,
                place,
                {
                    "epoch": epoch,
                    "method": _state_to_cpu(method),
                    "optimizer": optimizer.state_dict(),
                    "rng": {"sampling": sampling_rng.bit_generator.state, "noise": noise.get_state()},
                    "history": history,
                    "steps": steps,
                    "best": best,
                    "bad_epochs": bad_epochs,
                    "is_finished": is_finished,
                },
            )

    kept_epoch = history[-1]["epoch"] if history else 0
    if config.keep == "best" and best["encoder"] is not None:
        method.encoder.load_state_dict(best["encoder"])
        kept_epoch = best["epoch"]
    stopped_early = bool(history) and history[-1]["epoch"] < config.epochs
    return FitResult(
        method.cpu().eval(),
        history,
        kept_epoch,
        float(best_val_loss),
        stopped_early,
        metric,
        float(best["value"]) if history else math.nan,
        steps,
    )


@torch.no_grad()
def _validate(
    method: Method,
    source: _FrameSource,
    plan,
    device: torch.device,
    place: devices.Distributed,
    seed: int,
    precision: str,
) -> dict[str, float]:
    """{"loss": mean loss, metric: mean of each of the loss's metrics} over the fixed validation batches (each
    process evaluates its slice of each; the means are over all processes)."""
    method.eval()
    noise = seeds.validation_noise(seed, place.rank, device)
    sums: dict[str, torch.Tensor] = {}
    for batch in source.batches(plan, noise):
        with devices.autocast(device, precision):
            loss, metrics = method.loss(batch)
        for key, value in {**metrics, "loss": loss}.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
    method.train()
    return {key: devices.all_mean(float(total) / len(plan), place, device) for key, total in sorted(sums.items())}


def _write_checkpoint(path: Path, fingerprint: str, place: devices.Distributed, state: dict) -> None:
    """Rank 0 writes the resume file (atarirep.plumbing.resume), holding every rank's noise-generator state."""
    noise_states = [state["rng"]["noise"]]
    if place.is_distributed:
        noise_states = [None] * place.world_size
        dist.all_gather_object(noise_states, state["rng"]["noise"])
    if place.is_main:
        state["rng"] = {**state["rng"], "noise": noise_states}
        resume.write(path, CHECKPOINT_FORMAT, fingerprint, state)
    if place.is_distributed:
        dist.barrier()


# -- the stage's library function --------------------------------------------------------------------
def _data_fingerprint(folder: Path) -> str:
    """Changes whenever the episodes folder's content does (meta.json and the files' sizes)."""
    digest = hashlib.sha256((folder / "meta.json").read_bytes())
    for name in ("frames.bin", "steps.csv.gz"):
        digest.update(f"{name}:{(folder / name).stat().st_size}".encode())
    return digest.hexdigest()


def default_checkpoint_path(out_dir: str | os.PathLike) -> Path:
    """Where `pretrain` keeps its resume checkpoint: a hidden file beside out_dir (`.<name>.checkpoint.pt`)."""
    return resume.beside(out_dir, ".checkpoint.pt")


def write_live(live_dir: str | os.PathLike, result: FitResult) -> None:
    """Log `result`'s step log and epoch rows with dvclive into `live_dir`, dvclive's layout, x = optimizer step:

      metrics.json                             dvclive's summary: the last value of each, and the last step
      plots/metrics/train/loss.tsv             step, loss: the step log (FitResult.steps), mean train loss of the
      plots/metrics/train/samples_per_s.tsv        steps since the previous point, and their samples/s
      plots/metrics/val/loss.tsv               step, loss: per epoch, at its last step; val/<metric> for each
                                               val metric the history holds (e.g. val/accuracy)
      plots/metrics/epoch/epoch.tsv            step, epoch: the epoch log, one row per epoch; epoch/train_loss,
                                               epoch/samples_per_s and epoch/train_<metric> are the epoch means
    `live_dir` is written from scratch (Live() clears it), as a whole (the history comes from the checkpoint on a
    resumed run, so each epoch appears once); no dvc.yaml, git or experiment is touched. The LIVE_PLOTS files
    exist, header only, even when nothing was trained, since dvc.yaml declares them.
    """
    with StageLive(os.fspath(live_dir)) as live:
        for point in result.steps:
            live.step = point["step"]
            live.log_metric("train/loss", point["loss"])
            live.log_metric("train/samples_per_s", point["samples_per_s"])
        for row in result.history:
            live.step = row["step"]
            for key, value in row.items():
                if key != "step":
                    live.log_metric(f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}", value)
        for name in LIVE_PLOTS:
            path = Path(live.plots_dir) / "metrics" / f"{name}.tsv"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"step\t{Path(name).name}\n")


def pretrain(
    method: str,
    episodes_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 3e-4,
    patience: int = 15,
    keep: str = "last",
    seed: int = 0,
    device: str = "auto",
    sampling: str = "reference",
    precision: str = "fp32",
    method_config: dict | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    log_every: int = LOG_EVERY,
) -> Path:
    """Learn an encoder with `method` from the episodes in `episodes_dir`; returns out_dir.

    out_dir (written whole and atomically, by process 0) holds:
      encoder.pt    the encoder (atarirep.encoders.load), meta: method, method_config, game, kept epoch
      live/         the dvclive training log (write_live): train loss and samples/s every `log_every` optimizer
                    steps, val loss (and metric) and train means per epoch, x = optimizer step
      metrics.json  epochs_run, kept_epoch, best_val_loss, stopped_early, early_stop_metric, and
                    best_val_<metric> for a method that early-stops on a metric (e.g. best_val_accuracy)
    The resume checkpoint (default: `default_checkpoint_path(out_dir)`) is deleted once out_dir exists.
    Bad input (unknown method, bad value, missing/corrupt episodes, too little data) raises UserError
    before anything is written.
    """
    name = methods.canonical_name(method)
    method_config = dict(method_config or {})
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        keep=keep,
        seed=seed,
        device=device,
        sampling=sampling,
        precision=precision,
    )
    config.check()
    devices.resolve(device)
    module = build_method(name, seed, **method_config)
    store = episodes_lib.load(episodes_dir)
    for split in ("train", "val"):
        if split not in store.split_names:
            raise UserError(
                f"{episodes_dir} has no {split!r} split (it has {', '.join(store.split_names)}); "
                "collect with splits that include train and val"
            )
    train, val = store.split("train"), store.split("val")
    checkpoint_path = default_checkpoint_path(out_dir) if checkpoint_path is None else Path(checkpoint_path)
    fingerprint = resume.fingerprint(
        {"method": name, "method_config": method_config, "data": _data_fingerprint(Path(episodes_dir))}
    )
    result = fit(
        module,
        train,
        val,
        config,
        checkpoint_path=checkpoint_path,
        fingerprint=fingerprint,
        progress=progress,
        log_every=log_every,
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        return Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        encoders.save(
            result.method.encoder,
            tmp / "encoder.pt",
            method=name,
            method_config=method_config,
            game=store.game,
            seed=seed,
            kept_epoch=result.kept_epoch,
            epochs_run=len(result.history),
        )
        write_live(tmp / LIVE_DIR, result)
        write_json(
            tmp / "metrics.json",
            {
                "epochs_run": len(result.history),
                "kept_epoch": result.kept_epoch,
                "best_val_loss": None
                if math.isnan(result.best_val_loss) or math.isinf(result.best_val_loss)
                else result.best_val_loss,
                "stopped_early": result.stopped_early,
                "early_stop_metric": result.early_stop_metric,
                **(
                    {}
                    if result.early_stop_metric == "loss" or not result.history
                    else {f"best_val_{result.early_stop_metric}": result.best_val_metric}
                ),
            },
        )
    checkpoint_path.unlink(missing_ok=True)
    return Path(out_dir)
