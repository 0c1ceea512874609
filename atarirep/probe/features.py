"""Feature encoding: an encoder's frozen features of every frame, computed once for probing.

Any `nn.Module` that maps float frames (B, 1, 210, 160) in [0, 1] (NCHW, contiguous, as AtariARI feeds
them) to (B, F) can be probed, and probing never alters it: its train/eval mode (each submodule's),
device, dtype, memory format and weights are as before when a call returns. `Featurizer` is the one
way a module is run for probing; `encode` runs it over every frame. This module does not train
encoders (atarirep.methods) or probes (atarirep.probe.linear).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from atarirep import encoders, episodes
from atarirep.plumbing import devices
from atarirep.plumbing.errors import UserError

ENCODE_BATCH_SIZE = 256  # frames per encoder pass
NEEDS = "the probe needs a module that maps float frames (B, 1, 210, 160) in [0, 1] to (B, F) features"


def is_ours(module: nn.Module) -> bool:
    """True for atarirep's own encoder classes, whose channels-last path is known to compute the same features."""
    return type(module) in encoders.ARCHITECTURES.values()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode for the block; every submodule's own train/eval flag is restored after.

    A module that cannot switch (a torch.export program runs in the mode it was exported in) is left as it is.
    """
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
    except NotImplementedError:
        pass
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def input_dtype(module: nn.Module) -> torch.dtype:
    """The dtype frames are fed in: the module's first floating parameter or buffer's, else float32."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _device_of(module: nn.Module) -> torch.device | None:
    """The one device all of the module's tensors are on (None without tensors); a sentinel 'meta' if mixed."""
    found = {t.device for t in (*module.parameters(), *module.buffers())}
    if not found:
        return None
    return found.pop() if len(found) == 1 else torch.device("meta")


def _one_line(err: BaseException) -> str:
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message[:300]}" if message else type(err).__name__


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(
            f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in value[:4]
        )
        return f"a {type(value).__name__} of {len(value)} ({parts}{', ...' if len(value) > 4 else ''})"
    if isinstance(value, dict):
        return f"a dict with keys {', '.join(map(str, list(value)[:6]))}"
    return f"a {type(value).__name__}"


def checked_forward(
    encoder: nn.Module, x: torch.Tensor, feature_size: int | None, *, name: str | None = None
) -> torch.Tensor:
    """encoder(x) for a batch of preprocessed frames; UserError (one line) unless it is (B, feature_size).

    feature_size None takes the encoder's `feature_size` attribute, if any. An exception the module raises
    is named (type and message), never guessed at.
    """
    name = name or type(encoder).__name__
    try:
        z = encoder(x)
    except Exception as err:  # whatever a user's module raises is reported as it is
        raise UserError(
            f"encoder {name} raised {_one_line(err)} on a batch of {tuple(x.shape)} {x.dtype} frames; {NEEDS}"
        ) from None
    expected = feature_size if feature_size is not None else getattr(encoder, "feature_size", None)
    width = expected if isinstance(expected, int) else "F"
    if not isinstance(z, torch.Tensor):
        raise UserError(
            f"encoder {name} returned {_describe(z)} for a batch of {len(x)} frames, expected one "
            f"tensor ({len(x)}, {width}); return only the features (for example the first output)"
        )
    if z.ndim != 2 or z.shape[0] != len(x) or (isinstance(expected, int) and z.shape[1] != expected):
        raise UserError(
            f"encoder {name} returned shape {tuple(z.shape)} for a batch of {tuple(x.shape)} frames, "
            f"expected ({len(x)}, {width}); flatten to one feature vector per frame"
            + (" (or fix representation_len/feature_size)" if isinstance(expected, int) else "")
        )
    return z


def channels_last_twin(module: nn.Module, x: torch.Tensor, z: torch.Tensor | None = None) -> nn.Module | None:
    """A channels-last copy of `module` if, in eval mode, it computes `z` = module(x) from a channels-last x
    within float rounding; None if it raises, returns something else, or the module has no 4-d weights."""
    if not any(p.ndim == 4 for p in module.parameters()):
        return None
    with torch.no_grad(), eval_mode(module):
        z = module(x) if z is None else z
        twin = devices.place(copy.deepcopy(module), layout=torch.channels_last)
        try:
            z_fast = twin(x.contiguous(memory_format=torch.channels_last))
        except Exception:  # e.g. `.view` on a channels-last tensor: the plain layout it is
            return None
    if not (isinstance(z_fast, torch.Tensor) and isinstance(z, torch.Tensor) and z_fast.shape == z.shape):
        return None
    scale = float(z.detach().float().abs().max()) if z.numel() else 0.0
    agrees = torch.allclose(z_fast.float(), z.float(), rtol=1e-4, atol=1e-5 * max(1.0, scale))
    return twin if agrees else None


class Featurizer:
    """Frozen features of uint8 frames from any encoder, without altering it; use as a context manager.

        with Featurizer(encoder, device) as featurize:
            z = featurize(frames_uint8)          # (B, F) on `device`, no grad

    Frames are scaled to [0, 1] in the module's dtype (`input_dtype`) and fed NCHW-contiguous. The module
    runs in eval mode (AtariARI's run_probe puts its encoder in eval mode before probing); its own flags are
    restored on exit. A module on another device than `device` runs as a copy there. Channels-last (faster
    convolutions on CPU and CUDA) only where it computes the same features: atarirep's own encoders, or a
    user's module whose channels-last copy agrees with it on the first batch (`channels_last_twin`);
    `layout` says which was chosen once the first batch has run.
    """

    def __init__(self, encoder: nn.Module, device: torch.device, feature_size: int | None = None):
        self.encoder, self.device, self.feature_size = encoder, device, feature_size
        meta = getattr(encoder, "meta", None)
        self.name = (meta.get("name") if isinstance(meta, dict) else None) or type(encoder).__name__
        self.dtype = input_dtype(encoder)
        self.module: nn.Module | None = None
        self.layout = torch.contiguous_format
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Featurizer:
        self._stack.enter_context(eval_mode(self.encoder))
        return self

    def __exit__(self, *exc) -> None:
        self.module = None
        self._stack.close()

    def _choose(self, x: torch.Tensor) -> torch.Tensor:
        """Pick the module and layout on the first batch x (NCHW); its features."""
        layout = devices.memory_format(self.device)
        if is_ours(self.encoder):
            self.module = devices.place(copy.deepcopy(self.encoder), self.device, layout).eval()
            self.layout = layout
            return checked_forward(self.module, x.contiguous(memory_format=layout), self.feature_size, name=self.name)
        if _device_of(self.encoder) in (None, self.device):
            plain = self.encoder
        else:
            plain = copy.deepcopy(self.encoder).to(self.device).eval()
        z = checked_forward(plain, x, self.feature_size, name=self.name)
        twin = channels_last_twin(plain, x, z) if layout == torch.channels_last else None
        self.module, self.layout = (plain, torch.contiguous_format) if twin is None else (twin, layout)
        return z

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = encoders.preprocess(frames.to(self.device, non_blocking=True), self.dtype)
        with torch.no_grad():
            if self.module is None:
                z = self._choose(x)
                self.feature_size = z.shape[1] if self.feature_size is None else self.feature_size
                return z
            return checked_forward(
                self.module, x.contiguous(memory_format=self.layout), self.feature_size, name=self.name
            )


def encode(
    encoder: nn.Module,
    frames,
    *,
    batch_size: int = ENCODE_BATCH_SIZE,
    device: str = "cpu",
    feature_size: int | None = None,
    progress: bool = False,
    what: str = "frames",
) -> torch.Tensor:
    """(N, F) float32 CPU features of uint8 frames (N, 1, 210, 160), each frame encoded once, no grad.

    frames: an array, LazyFrames or tensor; read `batch_size` frames at a time. The encoder is run by a
    `Featurizer` on `device` (auto, cpu or cuda) and left as it was. UserError (one line) if the frames are not
    full-size uint8 frames, or the encoder raises or does not return (B, feature_size) vectors.
    """
    dev = devices.resolve(device)
    num_frames = len(frames)
    out = None
    with Featurizer(encoder, dev, feature_size) as featurize:
        for start in tqdm(range(0, num_frames, batch_size), desc=f"encode {what}", disable=not progress, leave=False):
            x = torch.as_tensor(np.asarray(frames[start : start + batch_size]))
            if x.dtype != torch.uint8 or tuple(x.shape[1:]) != episodes.FRAME_SHAPE:
                raise UserError(
                    f"{what} must be (N, 1, 210, 160) uint8 frames, got {tuple(x.shape)} "
                    f"{x.dtype}; pass the frames as collected"
                )
            z = featurize(x)
            if out is None:
                out = torch.empty((num_frames, z.shape[1]), dtype=torch.float32)
            out[start : start + len(z)] = z.float().cpu()
    if out is None:
        raise UserError(f"{what} are empty; collect more steps so every split has frames")
    return out
