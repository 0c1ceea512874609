"""Perturbation saliency of an agent's policy and value (Greydanus et al. 2018; docs/protocols.md 4).

For a grid of points every `stride` pixels, a blurred copy of the input replaces it around the point:
perturbed = I (1 - M) + blur_sigma3(I) M, where M is a Gaussian of sigma `radius` centred on the point,
scaled to a maximum of 1, applied alike to each of the 4 stacked frames. A point's score is
0.5 * ||out(I) - out(I')||^2, for the policy logits and separately for the value; the (H/stride, W/stride)
grid of scores is interpolated back to the frame size. Defaults on 84x84 stacks: radius = stride = 2.

As scipy's `gaussian_filter` (the paper's code), Gaussians reach int(4 sigma + 0.5) pixels along each axis
and no further, and the blur reflects the frame at its edges (scipy's `reflect`); so a point farther than
that from every pixel a network reads scores exactly 0. The blur and the masks' 1-D factors are built once
per call; the perturbed stacks go through the network in batches of `batch_size`, across points and stacks.
For an ActorCritic the first convolution is computed only on the patch a perturbation changes (it is
linear: conv1(I') = conv1(I) + conv1((B - I) M)), which makes the maps of a stack 2-3x faster on CPU:
about 0.5 s for radius = stride = 2 on one core.

- `saliency_maps`: (N, 4, 84, 84) uint8 stacks -> policy and value maps (N, 84, 84) float32.
- `episode_stacks`: the first observations of one game played by a network under a protocol.
- `overlay`, `write_png`, `write_gif`: the frame in gray, policy saliency in blue, value saliency in red.
- `time_one_frame`: seconds for the maps of one stack on CPU (the bench's figure).
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from atarirep.agents.network import ActorCritic, choose_actions
from atarirep.errors import UserError

BLUR_SIGMA = 3.0        # the blurred image the perturbation blends in (Greydanus: gaussian_filter(I, sigma=3))
TRUNCATE = 4.0          # scipy.ndimage's default: a Gaussian reaches int(TRUNCATE * sigma + 0.5) pixels
DEFAULT_RADIUS = 2      # docs/protocols.md 4: r = d = 2 on 84x84 stacks (5 on the paper's 80x80 frames)
DEFAULT_STRIDE = 2
DEFAULT_BATCH = 256     # perturbed stacks per forward pass on CPU (about 29 MB of float32 input)

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# -- the perturbation ---------------------------------------------------------------------------------
def _reach(sigma: float) -> int:
    return int(TRUNCATE * sigma + 0.5)


def _reflect_index(size: int, pad: int) -> torch.Tensor:
    """Indices of a 1-D axis of `size` padded by `pad` on each side, mirrored with the edge pixel repeated
    (scipy's `reflect`, numpy's `symmetric`); any pad, folding as often as needed."""
    i = torch.arange(-pad, size + pad) % (2 * size)
    return torch.where(i < size, i, 2 * size - 1 - i)


def gaussian_blur(images: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """(..., H, W) float -> the same blurred by a Gaussian of `sigma` along H and W (scipy's
    gaussian_filter with mode `reflect` and truncate 4), as two 1-D convolutions."""
    reach = _reach(sigma)
    t = torch.arange(-reach, reach + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype).to(images.device)
    shape = images.shape
    h, w = shape[-2:]
    x = images.reshape(-1, 1, h, w)
    x = x.index_select(2, _reflect_index(h, reach).to(images.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, _reflect_index(w, reach).to(images.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x.reshape(shape)


def grid(size: int, stride: int) -> torch.Tensor:
    """The perturbed points along one axis: 0, stride, 2 stride, ... below `size`."""
    return torch.arange(0, size, stride)


def mask_factors(size: int, centres: torch.Tensor, radius: float) -> torch.Tensor:
    """(len(centres), size): a Gaussian of sigma `radius` around each centre, 1 there, 0 beyond its reach;
    the mask of point (y, x) is the outer product of its row's and its column's factor."""
    t = torch.arange(size, dtype=torch.float64)[None, :] - centres.to(torch.float64)[:, None]
    g = torch.exp(-0.5 * (t / radius) ** 2)
    return torch.where(t.abs() <= _reach(radius), g, 0.0).to(torch.float32)


def perturb(images: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """I (1 - M) + B M: (K, C, H, W) images and their blurs, (K, H, W) masks applied to every channel."""
    m = masks[:, None]
    return images * (1 - m) + blurred * m


def _upsample_matrix(size: int, stride: int, points: int) -> torch.Tensor:
    """(size, points): pixel y takes the grid's value at y / stride, linearly between the two points around
    it (held past the last one)."""
    pos = torch.clamp(torch.arange(size, dtype=torch.float64) / stride, max=points - 1)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=points - 1)
    frac = pos - lo
    weights = torch.zeros(size, points, dtype=torch.float64)
    weights[torch.arange(size), lo] += 1 - frac
    weights[torch.arange(size), hi] += frac
    return weights.to(torch.float32)


def upsample(maps: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(N, gh, gw) grid scores -> (N, H, W): bilinear between grid points placed at their pixels."""
    rows = _upsample_matrix(size[0], stride, maps.shape[-2]).to(maps.device)
    cols = _upsample_matrix(size[1], stride, maps.shape[-1]).to(maps.device)
    return rows @ maps @ cols.T


def float_forward(network: nn.Module) -> Forward:
    """The network on float stacks in [0, 1] (a perturbed stack is no longer uint8): an ActorCritic skips its
    uint8 scaling (`preprocess` divides by 255, as done here); any other module is called on the floats."""
    if isinstance(network, ActorCritic):
        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = network.encoder(x.contiguous(memory_format=torch.channels_last))
            return network.actor(hidden), network.critic(hidden).squeeze(-1)
        return forward
    return network


class _LocalFirstLayer:
    """An ActorCritic's outputs on perturbed stacks, its first convolution computed only where it changes.

    The first layer is linear and a perturbation I' - I = (B - I) M is zero beyond the mask's reach, so
    conv1(I') = conv1(I) + conv1((B - I) M) where the last term is a convolution of a small patch (28x28
    pixels for radius 2, against 84x84: its 6x6 outputs of 20x20). The layers after it run in full. Same
    function as the network on the perturbed stacks, up to float rounding (a test compares them).
    """

    @staticmethod
    def applies(network: nn.Module) -> bool:
        """Whether `network` is an ActorCritic whose first layer is a plain square convolution."""
        conv = network.encoder.layers[0] if isinstance(network, ActorCritic) else None
        return (isinstance(conv, nn.Conv2d) and conv.padding == (0, 0) and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1])

    def __init__(self, network: ActorCritic, images, blurred, rows, cols, row_factors, col_factors, reach: int):
        conv = network.encoder.layers[0]
        self.network, self.weight, self.stride = network, conv.weight, conv.stride[0]
        k, s = conv.kernel_size[0], conv.stride[0]
        self.windows = []
        for centres, factors, size in ((rows, row_factors, images.shape[-2]), (cols, col_factors, images.shape[-1])):
            outputs = (size - k) // s + 1
            span = min(outputs, (2 * reach + k - 1) // s + 1)      # outputs one perturbation can change
            first = torch.clamp(-((reach + k - 1 - centres) // s), 0, outputs - span).to(factors.device)
            pixels = (s * first)[:, None] + torch.arange(s * (span - 1) + k, device=factors.device)
            outs = first[:, None] + torch.arange(span, device=factors.device)
            self.windows.append((pixels, outs, factors.gather(1, pixels)))
        self.delta = (blurred - images).permute(0, 2, 3, 1)          # (N, H, W, C)
        first_layer = F.conv2d(images, conv.weight, conv.bias, stride=s)
        self.base = first_layer.permute(0, 2, 3, 1).contiguous()     # (N, h1, w1, 32)

    def _rest(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.network.encoder.layers[1:](hidden.permute(0, 3, 1, 2))   # a channels-last view
        return self.network.actor(hidden), self.network.critic(hidden).squeeze(-1)

    def unperturbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs on the stacks themselves, computed by the same path as the perturbed ones."""
        return self._rest(self.base.clone())

    def __call__(self, stack, row, col) -> tuple[torch.Tensor, torch.Tensor]:
        (row_pixels, row_outs, row_mask), (col_pixels, col_outs, col_mask) = self.windows
        r_px, c_px = row_pixels[row][:, :, None], col_pixels[col][:, None, :]
        masks = row_mask[row][:, :, None] * col_mask[col][:, None, :]
        patches = self.delta[stack[:, None, None], r_px, c_px] * masks[..., None]    # (K, ph, pw, C)
        change = F.conv2d(patches.permute(0, 3, 1, 2), self.weight, stride=self.stride)
        hidden = self.base[stack]
        k = torch.arange(len(stack), device=stack.device)[:, None, None]
        hidden[k, row_outs[row][:, :, None], col_outs[col][:, None, :]] += change.permute(0, 2, 3, 1)
        return self._rest(hidden)


def saliency_grids(network: nn.Module, stacks, radius: float = DEFAULT_RADIUS, stride: int = DEFAULT_STRIDE,
                   batch_size: int = DEFAULT_BATCH, local: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) uint8 stacks -> the policy and value scores of every grid point, (N, gh, gw) float32
    each, on the network's device. Grid point (i, j) is pixel (i stride, j stride).

    `local`: for an ActorCritic, compute its first convolution only where a perturbation changes it
    (`_LocalFirstLayer`, 2-3x faster on CPU); False runs every perturbed stack through the whole network.
    """
    if radius <= 0 or stride < 1 or batch_size < 1:
        raise UserError(f"saliency radius {radius} and stride {stride} must be positive and batch_size "
                        f"{batch_size} at least 1; docs/protocols.md 4 uses radius = stride = 2 on 84x84 stacks")
    device = next(network.parameters()).device
    stacks = torch.as_tensor(np.asarray(stacks) if not torch.is_tensor(stacks) else stacks)
    if stacks.dtype != torch.uint8 or stacks.dim() != 4:
        raise TypeError(f"saliency expects (N, C, H, W) uint8 stacks, got {tuple(stacks.shape)} {stacks.dtype}")
    n, _, h, w = stacks.shape
    forward = float_forward(network)
    rows, cols = grid(h, stride), grid(w, stride)
    row_factors = mask_factors(h, rows, radius).to(device)
    col_factors = mask_factors(w, cols, radius).to(device)
    points = len(rows) * len(cols)
    policy = torch.empty(n * points, device=device)
    value = torch.empty(n * points, device=device)
    with torch.inference_mode():
        images = stacks.to(device).to(torch.float32).div_(255)     # as `preprocess` scales
        blurred = gaussian_blur(images)
        perturbed_outputs = None
        if local and _LocalFirstLayer.applies(network):
            perturbed_outputs = _LocalFirstLayer(network, images, blurred, rows, cols, row_factors, col_factors,
                                                 _reach(radius))
            logits0, value0 = perturbed_outputs.unperturbed()
        else:
            logits0, value0 = forward(images)
        # Jobs (stack, point) in order, cut into batches that may span stacks.
        for start in range(0, n * points, batch_size):
            job = torch.arange(start, min(start + batch_size, n * points), device=device)
            stack, point = job // points, job % points
            row, col = point // len(cols), point % len(cols)
            if perturbed_outputs is not None:
                logits, values = perturbed_outputs(stack, row, col)
            else:
                masks = row_factors[row][:, :, None] * col_factors[col][:, None, :]
                logits, values = forward(perturb(images[stack], blurred[stack], masks))
            policy[job] = 0.5 * (logits - logits0[stack]).pow(2).sum(-1)
            value[job] = 0.5 * (values - value0[stack]).pow(2)
    return policy.view(n, len(rows), len(cols)), value.view(n, len(rows), len(cols))


def saliency_maps(network: nn.Module, stacks, radius: float = DEFAULT_RADIUS, stride: int = DEFAULT_STRIDE,
                  batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4, 84, 84) uint8 stacks -> (policy (N, 84, 84), value (N, 84, 84)) float32 saliency, each grid
    score interpolated over the pixels between grid points."""
    policy, value = saliency_grids(network, stacks, radius, stride, batch_size)
    size = tuple(np.shape(stacks)[-2:])
    return (upsample(policy, size, stride).cpu().numpy().astype(np.float32),
            upsample(value, size, stride).cpu().numpy().astype(np.float32))


def time_one_frame(network: nn.Module, radius: float = DEFAULT_RADIUS, stride: int = DEFAULT_STRIDE,
                   batch_size: int = DEFAULT_BATCH, repeats: int = 1) -> float:
    """Seconds for both maps of one 84x84x4 stack on CPU (a copy of the network; after one warm-up
    batch), the best of `repeats` timed calls."""
    network = copy.deepcopy(network).cpu().eval()
    stack = np.random.default_rng(0).integers(0, 256, size=(1, 4, 84, 84), dtype=np.uint8)
    with torch.inference_mode():
        float_forward(network)(torch.rand(batch_size, 4, 84, 84))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        saliency_maps(network, stack, radius, stride, batch_size)
        best = min(best, time.perf_counter() - started)
    return best


# -- the frames it is shown on ------------------------------------------------------------------------
def episode_stacks(network: nn.Module, game: str, protocol: str, *, frames: int, epsilon: float,
                   seed: int) -> np.ndarray:
    """(T, 4, 84, 84) uint8: the first `frames` observations (fewer if the game ends) of one game played by
    `network` under `protocol`, acting as `evaluation.evaluate` does (`network.choose_actions`, from a numpy
    generator seeded by `seed`)."""
    from atarirep.agents.vector_env import AgentEnvs   # imported here: the maps need no emulator

    envs = AgentEnvs(game, 1, protocol, training=False, num_threads=1,
                     full_action_space=network.full_action_space)
    try:
        if envs.num_actions != network.num_actions:
            raise UserError(f"the network has {network.num_actions} actions but {envs.game} has "
                            f"{envs.num_actions}; use a checkpoint trained on {envs.game}")
        device = next(network.parameters()).device
        rng = np.random.default_rng(seed)
        obs = envs.reset(seed)
        kept = [obs[0]]
        while len(kept) < frames:
            with torch.no_grad():
                head, _ = network(torch.from_numpy(obs).to(device))
            step = envs.step(choose_actions(network, head, rng, epsilon))
            if step.terminated[0] or step.truncated[0]:   # the next observation is a new game's first
                break
            obs = step.obs
            kept.append(obs[0])
        return np.stack(kept)
    finally:
        envs.close()


# -- drawing ------------------------------------------------------------------------------------------
def _normalised(saliency: np.ndarray) -> np.ndarray:
    saliency = saliency.astype(np.float32) - saliency.min()
    top = saliency.max()
    return saliency / top if top > 0 else saliency


def _resize(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if saliency.shape == size:
        return saliency
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(saliency, np.float32))[None, None], size=size,
                            mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def overlay(frame: np.ndarray, policy_map: np.ndarray, value_map: np.ndarray, *, scale: int = 4,
            strength: float = 0.9, dim: float = 0.6) -> np.ndarray:
    """An RGB uint8 picture (H scale, W scale, 3): `frame` ((84, 84) gray or (210, 160, 3) RGB, shown in gray
    dimmed by `dim`), with the policy saliency added to the blue channel and the value saliency to the
    red, each scaled to [0, 1] within this frame and then by `strength` (Greydanus et al.'s drawing);
    enlarged `scale` times, nearest neighbour. Maps of another size than the frame are resized to it."""
    frame = np.asarray(frame)
    if frame.ndim == 3:   # RGB -> luma (ITU-R 601)
        frame = frame[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    size = frame.shape
    image = np.repeat(frame.astype(np.float32)[..., None] * dim, 3, axis=2)
    image[..., 2] += 255 * strength * _normalised(_resize(np.asarray(policy_map), size))
    image[..., 0] += 255 * strength * _normalised(_resize(np.asarray(value_map), size))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image


def write_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """An RGB uint8 image as a PNG (Pillow)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").save(path, format="PNG")


def write_gif(frames_rgb: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 15) -> None:
    """RGB uint8 frames as a looping GIF at `fps` (Pillow; each frame gets its own 256-colour palette)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f, np.uint8), "RGB") for f in frames_rgb]
    if not images:
        raise ValueError("write_gif needs at least one frame")
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)


def check_settings(p) -> None:
    """UserError unless the saliency params (atarirep.params.Saliency) have positive counts, epsilon a probability
    and a known protocol."""
    for name in ("checkpoints", "frames", "radius", "stride"):
        if getattr(p, name) < 1:
            raise UserError(f"params.yaml saliency.{name}={getattr(p, name)} must be at least 1")
    if not 0 <= p.epsilon <= 1:
        raise UserError(f"params.yaml saliency.epsilon={p.epsilon} must be a probability between 0 and 1")
    from atarirep.envs import get_protocol   # imported here, as episode_stacks imports the env

    get_protocol(p.protocol)
