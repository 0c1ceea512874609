"""Feature encoding: an encoder's frozen features of every frame, computed once for probing.

This module does not train encoders (atarirep.methods) or probes (atarirep.probe.linear).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from atarirep import devices, encoders, episodes
from atarirep.errors import UserError

ENCODE_BATCH_SIZE = 256    # frames per encoder pass


def encode(encoder: nn.Module, frames, *, batch_size: int = ENCODE_BATCH_SIZE, device: str = "cpu",
           feature_size: int | None = None, progress: bool = False, what: str = "frames") -> torch.Tensor:
    """(N, F) float32 CPU features of uint8 frames (N, 1, 210, 160), each frame encoded once, no grad.

    frames: an array, LazyFrames or tensor; read `batch_size` frames at a time. The encoder sees
    frames / 255 (encoders.preprocess) in eval mode, on `device` (auto, cpu or cuda). UserError if it
    does not take full-size frames or does not return (B, feature_size) vectors.
    """
    dev = devices.resolve(device)
    layout = devices.memory_format(dev)   # channels-last convs: ~1.6x faster on CPU too
    num_frames = len(frames)
    was_training = encoder.training
    encoder.eval().to(dev, memory_format=layout)
    out = None
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, num_frames, batch_size), desc=f"encode {what}", disable=not progress,
                              leave=False):
                x = torch.as_tensor(np.asarray(frames[start:start + batch_size]))
                if x.dtype != torch.uint8 or tuple(x.shape[1:]) != episodes.FRAME_SHAPE:
                    raise UserError(f"{what} must be (N, 1, 210, 160) uint8 frames, got {tuple(x.shape)} "
                                    f"{x.dtype}; pass the frames as collected")
                x = encoders.preprocess(x.to(dev)).contiguous(memory_format=layout)
                if out is None:
                    z = checked_forward(encoder, x, feature_size)
                    out = torch.empty((num_frames, z.shape[1]), dtype=torch.float32)
                else:
                    z = encoder(x)
                out[start:start + len(z)] = z.float().cpu()
    finally:
        encoder.train(was_training)
    if out is None:
        raise UserError(f"{what} are empty; collect more steps so every split has frames")
    return out


def checked_forward(encoder: nn.Module, x: torch.Tensor, feature_size: int | None) -> torch.Tensor:
    """encoder(x) for a first batch of preprocessed frames; UserError unless it is (B, feature_size).

    feature_size None takes the encoder's `feature_size` attribute, if any.
    """
    name = type(encoder).__name__
    try:
        z = encoder(x)
    except RuntimeError:
        raise UserError(f"encoder {name} does not take (B, 1, 210, 160) frames; probe an encoder built for "
                        "full-size frames (architecture benchmark)") from None
    expected = feature_size if feature_size is not None else getattr(encoder, "feature_size", None)
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or (expected is not None and z.shape[1] != expected):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise UserError(f"encoder {name} returns {shape} for a batch of {len(x)} frames, expected "
                        f"({len(x)}, {expected if expected is not None else 'F'}); probe an encoder whose "
                        "output is one feature vector per frame (or fix representation_len/feature_size)")
    return z
