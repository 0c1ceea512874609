"""Encoder networks that turn frames into feature vectors, and their one-file storage.

Architectures: `benchmark` (the AtariARI encoder for full-size 1x210x160 frames, docs/protocols.md 3),
`nature` (Nature DQN CNN, 4x84x84), `impala` (IMPALA ResNet, 4x84x84) and `tokenizer` (the discrete
encoder half of an IRIS-style VQ autoencoder, whose features are its quantized latents).
`BenchmarkDecoder` mirrors the benchmark encoder for the methods that reconstruct frames.
This module does not train (atarirep.pretraining) or define losses (atarirep.methods).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from atarirep.plumbing.atomic import write_bytes
from atarirep.plumbing.errors import UserError

FORMAT = "atarirep-encoder/1"


def preprocess(frames_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 frames (any shape) -> `dtype` in [0, 1]; the one place pixel scaling happens."""
    if frames_uint8.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 frames, got {frames_uint8.dtype}; scale only once")
    return frames_uint8.to(dtype).div_(255)


def _init_orthogonal(module: nn.Module, gain: float = nn.init.calculate_gain("relu")) -> None:
    """Orthogonal weights with ReLU gain and zero biases on every conv and linear layer (as AtariARI)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SpaceToDepthConv2d(nn.Conv2d):
    """Conv2d(k=8, stride 4, no padding) computed as a 2x2 conv over 4x4 space-to-depth blocks.

    Same parameters and function as nn.Conv2d (tests check it). In the contiguous (NCHW) layout a
    1-channel strided conv vectorises badly and the 16-channel form is faster on CPU; once the module
    is channels-last (`module.to(memory_format=torch.channels_last)`, as the training loop does)
    oneDNN's plain conv is faster again (bench/bench_pretrain.py), so that layout takes the plain path.
    Rows and columns past the last full 4-pixel block (210 -> 208) are never covered by a window, so
    cropping them changes nothing. Set `use_space_to_depth = False` on an instance for the plain path.
    """

    use_space_to_depth = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        is_channels_last = self.weight.stride(1) == 1  # (O, C, 8, 8) weights restrided by .to(channels_last)
        if not self.use_space_to_depth or is_channels_last:
            return super().forward(x)
        b, c, h, w = x.shape
        hb, wb = h // 4, w // 4
        blocks = (
            x[:, :, : 4 * hb, : 4 * wb].reshape(b, c, hb, 4, wb, 4).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 16, hb, wb)
        )  # (B, 16C, H/4, W/4)
        o = self.out_channels
        weight = self.weight.reshape(o, c, 2, 4, 2, 4).permute(0, 1, 3, 5, 2, 4).reshape(o, c * 16, 2, 2)
        return F.conv2d(blocks, weight, self.bias)


def _conv8x8s4(in_channels: int, out_channels: int) -> nn.Conv2d:
    return SpaceToDepthConv2d(in_channels, out_channels, 8, stride=4)


def local_decoder(out_channels: int = 1) -> nn.Sequential:
    """(B, 128, 11, 8) -> (B, out_channels, 210, 160) logits: the benchmark encoder's local layers mirrored.

    ConvT(128->64, 4, s2) ReLU, ConvT(64->32, 4, s2, output_padding 1) ReLU, ConvT(32->C, 8, s4, output_padding (2, 0)).
    """
    return nn.Sequential(
        nn.ConvTranspose2d(128, 64, 4, stride=2),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 4, stride=2, output_padding=(1, 1)),
        nn.ReLU(),
        nn.ConvTranspose2d(32, out_channels, 8, stride=4, output_padding=(2, 0)),
    )


class BenchmarkEncoder(nn.Module):
    """AtariARI's encoder for full-size frames: (B, C, 210, 160) float in [0, 1] -> (B, feature_size).

    Conv(C->32, 8, s4) ReLU, Conv(32->64, 4, s2) ReLU, Conv(64->128, 4, s2) ReLU  [local map 128x11x8],
    Conv(128->64, 3, s1) ReLU, flatten 64x9x6 = 3456, Linear(3456 -> feature_size), no final ReLU.
    """

    architecture = "benchmark"
    local_shape = (128, 11, 8)

    def __init__(self, in_channels: int = 1, feature_size: int = 256):
        super().__init__()
        self.config = {"in_channels": in_channels, "feature_size": feature_size}
        self.feature_size = feature_size
        self.local_layers = nn.Sequential(
            _conv8x8s4(in_channels, 32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2),
            nn.ReLU(),
        )
        self.global_layers = nn.Sequential(
            nn.Conv2d(128, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 9 * 6, feature_size)
        )
        _init_orthogonal(self)

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 210, 160) -> the local feature map (B, 128, 11, 8)."""
        return self.local_layers(x)

    def forward_with_local(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs of one pass: global (B, feature_size) and local (B, 128, 11, 8)."""
        local = self.local_layers(x)
        return self.global_layers(local), local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_layers(self.local_layers(x))


class BenchmarkDecoder(nn.Module):
    """The benchmark encoder's mirror: (B, feature_size) -> (B, C, 210, 160) logits (pre-sigmoid).

    Linear(feature_size -> 3456) ReLU, ConvT(64->128, 3) ReLU [128x11x8], then `local_decoder`. As AtariARI's
    Decoder: orthogonal transposed convolutions, the Linear with PyTorch's default initialisation.
    """

    def __init__(self, feature_size: int = 256, out_channels: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(feature_size, 64 * 9 * 6),
            nn.ReLU(),
            nn.Unflatten(1, (64, 9, 6)),
            nn.ConvTranspose2d(64, 128, 3, stride=1),
            nn.ReLU(),
            *local_decoder(out_channels),
        )
        _init_orthogonal(self.layers[3:])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class NatureCNN(nn.Module):
    """Nature DQN torso: (B, 4, 84, 84) float in [0, 1] -> (B, 512) after a final ReLU (CleanRL's PPO)."""

    architecture = "nature"

    def __init__(self, in_channels: int = 4, feature_size: int = 512):
        super().__init__()
        self.config = {"in_channels": in_channels, "feature_size": feature_size}
        self.feature_size = feature_size
        self.layers = nn.Sequential(
            _conv8x8s4(in_channels, 32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, feature_size),
            nn.ReLU(),
        )
        _init_orthogonal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaCNN(nn.Module):
    """IMPALA ResNet torso (Espeholt et al. 2018, fig. 3): (B, C, H, W) in [0, 1] -> (B, feature_size).

    Per stage (16, 32, 32 channels): Conv 3x3, MaxPool 3x3 stride 2, two residual blocks; then ReLU,
    flatten, Linear(-> feature_size), ReLU. 84x84 input gives a 32x11x11 map.
    """

    architecture = "impala"

    def __init__(
        self,
        in_channels: int = 4,
        feature_size: int = 256,
        channels: tuple[int, ...] = (16, 32, 32),
        input_size: tuple[int, int] = (84, 84),
    ):
        super().__init__()
        channels, input_size = tuple(channels), (input_size[0], input_size[1])
        self.config = {
            "in_channels": in_channels,
            "feature_size": feature_size,
            "channels": list(channels),
            "input_size": list(input_size),
        }
        self.feature_size = feature_size
        stages, height, width, previous = [], *input_size, in_channels
        for c in channels:
            stages += [
                nn.Conv2d(previous, c, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _ResidualBlock(c),
                _ResidualBlock(c),
            ]
            height, width, previous = (height + 1) // 2, (width + 1) // 2, c
        self.layers = nn.Sequential(
            *stages, nn.ReLU(), nn.Flatten(), nn.Linear(previous * height * width, feature_size), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TokenEncoder(nn.Module):
    """Discrete encoder of an IRIS-style tokenizer: (B, C, 210, 160) -> (B, 16 * embed_dim) quantized latents.

    The benchmark encoder's local layers [128x11x8], Conv(128 -> embed_dim, (5, 2), s2) to a 4x4 grid,
    then each of the 16 vectors is replaced by its nearest codebook entry (vocab_size x embed_dim).
    `encode` returns the pre-quantization latents, their quantized values and the tokens.
    """

    architecture = "tokenizer"
    grid = (4, 4)

    def __init__(self, in_channels: int = 1, vocab_size: int = 512, embed_dim: int = 512):
        super().__init__()
        self.config = {"in_channels": in_channels, "vocab_size": vocab_size, "embed_dim": embed_dim}
        self.feature_size = self.grid[0] * self.grid[1] * embed_dim
        self.local_layers = nn.Sequential(
            _conv8x8s4(in_channels, 32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2),
            nn.ReLU(),
        )
        self.pre_quant = nn.Conv2d(128, embed_dim, (5, 2), stride=2)  # 11x8 -> 4x4
        self.codebook = nn.Embedding(vocab_size, embed_dim)
        _init_orthogonal(self)
        nn.init.uniform_(self.codebook.weight, -1.0 / vocab_size, 1.0 / vocab_size)  # as IRIS

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> z (B, 16, D) continuous, z_q (B, 16, D) nearest codebook entries, tokens (B, 16) int64."""
        z = self.pre_quant(self.local_layers(x)).flatten(2).transpose(1, 2).float()  # (B, 16, D)
        codes = self.codebook.weight.float()  # (K, D)
        with torch.autocast(z.device.type, enabled=False):  # nearest code in float32
            distances = z.pow(2).sum(-1, keepdim=True) - 2 * z @ codes.T + codes.pow(2).sum(-1)  # (B, 16, K)
        tokens = distances.argmin(-1)  # (B, 16)
        return z, self.codebook(tokens), tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[1].flatten(1)  # (B, 16 * D)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "benchmark": BenchmarkEncoder,
    "nature": NatureCNN,
    "impala": ImpalaCNN,
    "tokenizer": TokenEncoder,
}


def build(architecture: str, **config) -> nn.Module:
    """A freshly initialised encoder of `architecture` with `config` (the class's keyword arguments)."""
    if architecture not in ARCHITECTURES:
        raise UserError(f"encoder architecture {architecture!r} is unknown; use one of {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[architecture](**config)
    except TypeError as err:
        raise UserError(f"bad config for encoder architecture {architecture!r}: {err}") from None


def _unwrap(module: nn.Module) -> nn.Module:
    """The bare encoder inside DDP / torch.compile wrappers."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        wrapped = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        assert isinstance(wrapped, nn.Module)
        module = wrapped
    return module


def save(encoder: nn.Module, path: str | os.PathLike, **extra_meta) -> None:
    """Write `encoder` to one file atomically: {"format", "architecture", "config", "state_dict", "meta"}.

    Weights are stored as float32 CPU tensors; `extra_meta` (plain values) goes to "meta".
    """
    encoder = _unwrap(encoder)
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in encoder.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "architecture": encoder.architecture,
        # torch's stubs type every Module attribute as a tensor or submodule; an encoder's config is a dict
        "config": dict(cast(dict, encoder.config)),
        "state_dict": state,
        "meta": dict(extra_meta),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def read_meta(path: str | os.PathLike) -> dict:
    """The file's {"architecture", "config", "meta"} without building the network."""
    payload = _read(Path(path))
    return {k: payload[k] for k in ("architecture", "config", "meta")}


def _read(path: Path) -> dict:
    fix = "rerun the stage that makes it (`dvc repro`) or `dvc pull` it"
    if not path.is_file():
        raise UserError(f"encoder file {path} is missing; {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise UserError(f"encoder file {path} is truncated or corrupt ({type(err).__name__}); {fix}") from None
    if (
        not isinstance(payload, dict)
        or payload.get("format") != FORMAT
        or not {"architecture", "config", "state_dict", "meta"} <= payload.keys()
    ):
        raise UserError(f"encoder file {path} is not an atarirep encoder ({FORMAT}); {fix}")
    if payload["architecture"] not in ARCHITECTURES:
        raise UserError(
            f"encoder file {path} has unknown architecture {payload['architecture']!r} (known: "
            f"{', '.join(ARCHITECTURES)}); update atarirep or {fix}"
        )
    return payload


EXPORT_HOWTO = (
    "save your module with torch.export.save(torch.export.export(model.eval(), (frames,), dynamic_shapes="
    "{'x': {0: torch.export.Dim('batch')}}), path), frames a (2, 1, 210, 160) float batch"
)


def _is_export_archive(path: Path) -> bool:
    """True for a torch.export.save archive (a zip without the data.pkl that torch.save writes)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names)


def load_any(path: str | os.PathLike) -> nn.Module:
    """An encoder to probe from a file: an atarirep encoder (`load`), or any module saved with torch.export
    (a user's own encoder, loaded without its code). UserError (one line) for anything else."""
    path = Path(path)
    if not path.is_file() or not _is_export_archive(path):
        return load(path)
    try:
        module = torch.export.load(path).module()
    except Exception as err:  # torch raises many types for a damaged or foreign archive, or a missing device
        message = " ".join(str(err).split())[:200]
        raise UserError(
            f"encoder file {path} is a torch.export archive that does not load here "
            f"({type(err).__name__}: {message}); {EXPORT_HOWTO}"
        ) from None
    module.meta = {}
    return module


def load(path: str | os.PathLike, expect: str | None = None) -> nn.Module:
    """Rebuild the encoder saved at `path` (CPU, eval mode); UserError if missing, corrupt or not `expect`."""
    path = Path(path)
    payload = _read(path)
    if expect is not None and payload["architecture"] != expect:
        raise UserError(
            f"encoder file {path} holds a {payload['architecture']!r} encoder, expected "
            f"{expect!r}; point to a {expect} encoder file"
        )
    encoder = build(payload["architecture"], **payload["config"])
    try:
        encoder.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise UserError(
            f"encoder file {path} has weights that do not fit its {payload['architecture']!r} "
            "config; rerun the stage that makes it (`dvc repro`)"
        ) from None
    encoder.meta = payload["meta"]
    return encoder.eval()
