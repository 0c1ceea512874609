"""Perturbation saliency of an agent's policy and value (Greydanus et al. 2018; docs/protocols.md 4), as
Greydanus et al.'s visualize_atari code computes and draws it (and the torchbeast PopArt code runs it).

For a grid of points every `stride` pixels, a blurred copy of the input replaces it around the point:
perturbed = I (1 - M) + blur_sigma3(I) M, applied alike to each of the 4 stacked frames, where M is the
reference's `get_mask`: the disc x^2 + y^2 <= 1 around the point (the point and its 4 neighbours, those
inside the frame), blurred by scipy's gaussian_filter of sigma `radius`, divided by its maximum. A point's
score is 0.5 * ||out(I) - out(I')||^2, for the policy logits and separately for the value; the
(H/stride, W/stride) grid of scores is interpolated back to the frame size. Defaults on 84x84 stacks:
radius = stride = 2.

As scipy's `gaussian_filter` (the paper's code), Gaussians reach int(4 sigma + 0.5) pixels along each axis
and no further, and both blurs reflect the frame at its edges (scipy's `reflect`): the mask of a point at
an edge also holds the blurred mirror image of its disc, so it reaches int(4 radius + 0.5) + 1 pixels from
the point, never more, and a point farther than that from every pixel a network reads scores exactly 0.
The disc is a sum of two separable terms, so every mask comes from 1-D factors and a peak per point, built
once per call; the perturbed stacks go through the network in batches of `batch_size`, across points and
stacks. For an ActorCritic the first convolution is computed only on the patch a perturbation changes (it
is linear: conv1(I') = conv1(I) + conv1((B - I) M)), which saves most of that layer's work.

Drawing (the reference's `saliency_on_atari_frame`): each map, less its minimum, is scaled so that its
brightest pixel is a fixed factor (POLICY_FUDGE, VALUE_FUDGE) times its maximum score and added to one
colour channel of the frame, clipped to 255: brightness is proportional to saliency, so frames compare;
no frame is stretched to full brightness on its own.

- `saliency_maps`: (N, 4, 84, 84) uint8 stacks -> policy and value maps (N, 84, 84) float32.
- `get_mask`, `GridMasks`: the reference's mask of one point, of every grid point.
- `episode_stacks`: the first observations of one game played by a network under a protocol.
- `overlay`, `write_png`, `write_gif`: the frame, policy saliency added in blue, value saliency in red.
- `time_one_frame`: seconds for the maps of one stack on CPU (the bench's figure).
- `check_settings`: the saliency params' ranges; `checkpoint_saliency`: the saliency stage, its files written.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from atarirep import seeds
from atarirep.agents import acting, checkpoints
from atarirep.agents.network import ActorCritic, AgentNetwork
from atarirep.games import get_protocol
from atarirep.plumbing import atomic, devices
from atarirep.plumbing.errors import UserError

BLUR_SIGMA = 3.0  # the blurred image the perturbation blends in (Greydanus: gaussian_filter(I, sigma=3))
TRUNCATE = 4.0  # scipy.ndimage's default: a Gaussian reaches int(TRUNCATE * sigma + 0.5) pixels
DEFAULT_RADIUS = 2  # docs/protocols.md 4: r = d = 2 on 84x84 stacks (5 on the paper's 80x80 frames)
DEFAULT_STRIDE = 2
DEFAULT_BATCH = 256  # perturbed stacks per forward pass on CPU (about 29 MB of float32 input)

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


def blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """(size, size) float64 B with B @ v = scipy.ndimage.gaussian_filter1d(v, sigma) (mode `reflect`,
    truncate 4): row y holds the kernel's weights on the input pixels output y reads, mirrored ones included."""
    reach = _reach(sigma)
    t = torch.arange(-reach, reach + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    sources = _reflect_index(size, reach).unfold(0, 2 * reach + 1, 1)  # (size, taps): pixel of each tap
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.scatter_add_(1, sources, kernel.expand(size, -1).contiguous())


def mask_factors(size: int, centres: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, sides), each (len(centres), size) float64: along one axis, the Gaussian blur (sigma `radius`,
    as `blur_matrix`) of the centre pixel and of its two neighbours (those inside the frame).

    The reference's disc x^2 + y^2 <= 1 is the point and its 4 neighbours, e_y (x) (e_x + s_x) + s_y (x) e_x
    (e a unit pixel, s its two neighbours); the 2-D blur is separable and linear, so the blurred disc of
    point (y, x) is centre_y (x) (centre_x + sides_x) + sides_y (x) centre_x (`combine_factors`)."""
    blur = blur_matrix(size, radius)
    centres = centres.long()
    sides = torch.zeros(len(centres), size, dtype=torch.float64)
    for offset in (-1, 1):
        pixel = centres + offset
        inside = (pixel >= 0) & (pixel < size)
        sides[inside] += blur[:, pixel[inside]].T
    return blur[:, centres].T.contiguous(), sides


def combine_factors(
    row_centre: torch.Tensor, row_sides: torch.Tensor, col_centre: torch.Tensor, col_sides: torch.Tensor
) -> torch.Tensor:
    """(K, h) row and (K, w) column factors (`mask_factors`, or a window of them) -> the (K, h, w) blurred
    discs, not yet scaled to a maximum of 1."""
    return (
        row_centre[:, :, None] * (col_centre + col_sides)[:, None, :] + row_sides[:, :, None] * col_centre[:, None, :]
    )


class GridMasks:
    """The masks of every grid point (rows x cols) of an (H, W) frame, as Greydanus et al.'s `get_mask`
    builds each: a disc of radius 1 around the point (x^2 + y^2 <= 1: 5 pixels, fewer at the frame's edge)
    blurred by scipy's gaussian_filter of sigma `radius` (truncate 4, mode `reflect`: near an edge the
    disc's mirror image adds in), divided by its maximum. Kept as per-axis factors and per-point peaks.
    """

    def __init__(self, shape: tuple[int, int], rows: torch.Tensor, cols: torch.Tensor, radius: float):
        self.rows = mask_factors(shape[0], rows, radius)
        self.cols = mask_factors(shape[1], cols, radius)
        # A mask reaches the blur's reach beyond the disc: the disc's mirror images lie no nearer to a pixel
        # of the frame than the disc itself. So each point's maximum is the maximum over that square.
        self.reach = _reach(radius) + 1
        square = []
        for centres, size, factors in ((rows, shape[0], self.rows), (cols, shape[1], self.cols)):
            pixels = (centres.long()[:, None] + torch.arange(-self.reach, self.reach + 1)).clamp(0, size - 1)
            square.append(tuple(f.gather(1, pixels) for f in factors))
        (row_centre, row_sides), (col_centre, col_sides) = square
        i, j = torch.meshgrid(torch.arange(len(rows)), torch.arange(len(cols)), indexing="ij")
        i, j = i.flatten(), j.flatten()
        self.peaks = combine_factors(row_centre[i], row_sides[i], col_centre[j], col_sides[j]).amax((1, 2))
        self.peaks = self.peaks.view(len(rows), len(cols))

    def to(self, device, dtype=torch.float32) -> GridMasks:
        """The factors and peaks on `device` as `dtype` (computed in float64)."""
        moved = copy.copy(self)
        moved.rows = (self.rows[0].to(device, dtype), self.rows[1].to(device, dtype))
        moved.cols = (self.cols[0].to(device, dtype), self.cols[1].to(device, dtype))
        moved.peaks = self.peaks.to(device, dtype)
        return moved

    def __call__(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """(K,) grid rows and columns -> their (K, H, W) masks, each of maximum 1."""
        masks = combine_factors(self.rows[0][row], self.rows[1][row], self.cols[0][col], self.cols[1][col])
        return masks / self.peaks[row, col][:, None, None]


def get_mask(centre: tuple[int, int], size: tuple[int, int], radius: float) -> np.ndarray:
    """(H, W) float64: Greydanus et al.'s `get_mask(center, size, r)` for one point (`GridMasks`)."""
    masks = GridMasks((size[0], size[1]), torch.tensor([centre[0]]), torch.tensor([centre[1]]), radius)
    zero = torch.zeros(1, dtype=torch.long)
    return masks(zero, zero)[0].numpy()


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
    conv1(I') = conv1(I) + conv1((B - I) M) where the last term is a convolution of a small patch (for
    radius 2 a mask reaches 9 pixels: 32x32 pixels, against 84x84, give 7x7 of the 20x20 outputs). The
    layers after it run in full. Same function as the network on the perturbed stacks, up to float
    rounding (a test compares them).
    """

    @staticmethod
    def applies(network: nn.Module) -> TypeGuard[ActorCritic]:
        """Whether `network` is an ActorCritic whose first layer is a plain square convolution."""
        conv = network.encoder.layers[0] if isinstance(network, ActorCritic) else None
        return (
            isinstance(conv, nn.Conv2d)
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.stride[0] == conv.stride[1]
        )

    def __init__(self, network: ActorCritic, images, blurred, rows, cols, masks: GridMasks):
        conv = network.encoder.layers[0]
        assert isinstance(conv, nn.Conv2d)  # as `applies` checked
        self.network, self.weight, self.stride = network, conv.weight, conv.stride[0]
        self.peaks = masks.peaks
        k, s, reach = conv.kernel_size[0], conv.stride[0], masks.reach
        self.windows = []
        for centres, factors, size in ((rows, masks.rows, images.shape[-2]), (cols, masks.cols, images.shape[-1])):
            outputs = (size - k) // s + 1
            span = min(outputs, (2 * reach + k - 1) // s + 1)  # outputs one perturbation can change
            first = torch.clamp(-((reach + k - 1 - centres) // s), 0, outputs - span).to(images.device)
            pixels = (s * first)[:, None] + torch.arange(s * (span - 1) + k, device=images.device)
            outs = first[:, None] + torch.arange(span, device=images.device)
            patch = tuple(f.gather(1, pixels) for f in factors)
            # Every output a mask changes lies in its window: its factors are 0 at the pixels left out.
            read = s * (outputs - 1) + k  # the pixels the convolution reads
            if any(f[:, :read].scatter(1, pixels, 0.0).any() for f in factors):
                raise RuntimeError("a saliency mask reaches beyond its first-layer window")
            self.windows.append((pixels, outs, patch))
        self.delta = (blurred - images).permute(0, 2, 3, 1)  # (N, H, W, C)
        first_layer = F.conv2d(images, conv.weight, conv.bias, stride=s)
        self.base = first_layer.permute(0, 2, 3, 1).contiguous()  # (N, h1, w1, 32)

    def _rest(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.network.encoder.layers[1:](hidden.permute(0, 3, 1, 2))  # a channels-last view
        return self.network.actor(hidden), self.network.critic(hidden).squeeze(-1)

    def unperturbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs on the stacks themselves, computed by the same path as the perturbed ones."""
        return self._rest(self.base.clone())

    def __call__(self, stack, row, col) -> tuple[torch.Tensor, torch.Tensor]:
        (row_pixels, row_outs, (row_centre, row_sides)), (col_pixels, col_outs, (col_centre, col_sides)) = self.windows
        r_px, c_px = row_pixels[row][:, :, None], col_pixels[col][:, None, :]
        masks = combine_factors(row_centre[row], row_sides[row], col_centre[col], col_sides[col])
        masks = masks / self.peaks[row, col][:, None, None]
        patches = self.delta[stack[:, None, None], r_px, c_px] * masks[..., None]  # (K, ph, pw, C)
        change = F.conv2d(patches.permute(0, 3, 1, 2), self.weight, stride=self.stride)
        hidden = self.base[stack]
        k = torch.arange(len(stack), device=stack.device)[:, None, None]
        hidden[k, row_outs[row][:, :, None], col_outs[col][:, None, :]] += change.permute(0, 2, 3, 1)
        return self._rest(hidden)


def saliency_grids(
    network: nn.Module,
    stacks,
    radius: float = DEFAULT_RADIUS,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = DEFAULT_BATCH,
    local: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) uint8 stacks -> the policy and value scores of every grid point, (N, gh, gw) float32
    each, on the network's device. Grid point (i, j) is pixel (i stride, j stride).

    `local`: for an ActorCritic, compute its first convolution only where a perturbation changes it
    (`_LocalFirstLayer`); False runs every perturbed stack through the whole network.
    """
    if radius <= 0 or stride < 1 or batch_size < 1:
        raise UserError(
            f"saliency radius {radius} and stride {stride} must be positive and batch_size "
            f"{batch_size} at least 1; docs/protocols.md 4 uses radius = stride = 2 on 84x84 stacks"
        )
    device = next(network.parameters()).device
    stacks = torch.as_tensor(np.asarray(stacks) if not torch.is_tensor(stacks) else stacks)
    if stacks.dtype != torch.uint8 or stacks.dim() != 4:
        raise TypeError(f"saliency expects (N, C, H, W) uint8 stacks, got {tuple(stacks.shape)} {stacks.dtype}")
    n, _, h, w = stacks.shape
    forward = float_forward(network)
    rows, cols = grid(h, stride), grid(w, stride)
    masks = GridMasks((h, w), rows, cols, radius).to(device)
    points = len(rows) * len(cols)
    policy = torch.empty(n * points, device=device)
    value = torch.empty(n * points, device=device)
    with torch.inference_mode():
        images = stacks.to(device).to(torch.float32).div_(255)  # as `preprocess` scales
        blurred = gaussian_blur(images)
        perturbed_outputs = None
        if local and _LocalFirstLayer.applies(network):
            perturbed_outputs = _LocalFirstLayer(network, images, blurred, rows.to(device), cols.to(device), masks)
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
                logits, values = forward(perturb(images[stack], blurred[stack], masks(row, col)))
            policy[job] = 0.5 * (logits - logits0[stack]).pow(2).sum(-1)
            value[job] = 0.5 * (values - value0[stack]).pow(2)
    return policy.view(n, len(rows), len(cols)), value.view(n, len(rows), len(cols))


def saliency_maps(
    network: nn.Module,
    stacks,
    radius: float = DEFAULT_RADIUS,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = DEFAULT_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4, 84, 84) uint8 stacks -> (policy (N, 84, 84), value (N, 84, 84)) float32 saliency, each grid
    score interpolated over the pixels between grid points."""
    policy, value = saliency_grids(network, stacks, radius, stride, batch_size)
    size = tuple(np.shape(stacks)[-2:])
    return (
        upsample(policy, size, stride).cpu().numpy().astype(np.float32),
        upsample(value, size, stride).cpu().numpy().astype(np.float32),
    )


def time_one_frame(
    network: nn.Module,
    radius: float = DEFAULT_RADIUS,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = DEFAULT_BATCH,
    repeats: int = 1,
) -> float:
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
def episode_stacks(
    network: AgentNetwork, game: str, protocol: str, *, frames: int, epsilon: float, seed: int
) -> np.ndarray:
    """(T, 4, 84, 84) uint8: the first `frames` observations (fewer if the game ends) of one game played by
    `network` under `protocol` in one env, acting as `evaluation.evaluate` does (`acting.play`, from a numpy
    generator seeded by `seed`)."""
    envs = acting.agent_envs(network, game, protocol, 1)
    try:
        obs = envs.reset(seed)
        kept = [obs[0]]
        played = acting.play(network, envs, obs, np.random.default_rng(seed), epsilon)
        for step in itertools.islice(played, max(frames - 1, 0)):
            if step.terminated[0] or step.truncated[0]:  # the next observation is a new game's first
                break
            kept.append(step.obs[0])
        return np.stack(kept)
    finally:
        envs.close()


# -- drawing ------------------------------------------------------------------------------------------
# Brightness per unit of saliency: Greydanus et al.'s get_env_meta for Pong (actor_ff, critic_ff), the
# same as the torchbeast PopArt code's policy_ff and baseline_ff for Pong. One factor for every frame, so
# that frames (and checkpoints) compare: a map's brightest pixel is fudge x its maximum score, clipped at 255.
POLICY_FUDGE = 500.0
VALUE_FUDGE = 600.0
POLICY_CHANNEL = 2  # blue, as the reference draws the actor's saliency
VALUE_CHANNEL = 0  # red, the critic's


def _resize(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if saliency.shape == size:
        return saliency
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(saliency, np.float32))[None, None],
        size=size,
        mode="bilinear",
        align_corners=False,
    )
    return resized[0, 0].numpy()


def saliency_on_frame(saliency: np.ndarray, image: np.ndarray, fudge_factor: float, channel: int) -> np.ndarray:
    """Greydanus et al.'s `saliency_on_atari_frame`: (H, W, 3) uint8 `image` with `saliency` (resized to H x W,
    bilinear) added to one channel: S - min(S), scaled so its maximum is fudge_factor x the map's maximum,
    truncated to integers; the sum clipped to 1..255 (the reference's bounds)."""
    saliency = np.asarray(saliency, np.float32)
    top_score = float(saliency.max())
    shown = _resize(saliency, image.shape[:2]).astype(np.float64)
    shown -= shown.min()
    top = shown.max()
    shown = fudge_factor * top_score * shown / top if top > 0 else np.zeros_like(shown)
    image = np.asarray(image).astype(np.uint16)
    image[..., channel] += np.clip(shown, 0, 255).astype(np.uint16)  # past 255 it is clipped anyway
    return image.clip(1, 255).astype(np.uint8)


def overlay(
    frame: np.ndarray,
    policy_map: np.ndarray,
    value_map: np.ndarray,
    *,
    policy_fudge: float = POLICY_FUDGE,
    value_fudge: float = VALUE_FUDGE,
    scale: int = 4,
) -> np.ndarray:
    """An RGB uint8 picture (H scale, W scale, 3): `frame` ((H, W) gray, drawn in gray, or (H, W, 3) RGB)
    with the policy saliency added to the blue channel and the value saliency to the red as the reference
    draws them (`saliency_on_frame`, one fixed factor each, not stretched per frame); enlarged `scale`
    times, nearest neighbour. Maps of another size than the frame are resized to it."""
    frame = np.asarray(frame)
    image = frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=2)
    image = saliency_on_frame(policy_map, image, policy_fudge, POLICY_CHANNEL)
    image = saliency_on_frame(value_map, image, value_fudge, VALUE_CHANNEL)
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
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def check_settings(p) -> None:
    """UserError unless the saliency params (atarirep.plumbing.params.Saliency) have positive counts, epsilon a
    probability and a known protocol."""
    for name in ("checkpoints", "frames", "radius", "stride"):
        if getattr(p, name) < 1:
            raise UserError(f"params.yaml saliency.{name}={getattr(p, name)} must be at least 1")
    if not 0 <= p.epsilon <= 1:
        raise UserError(f"params.yaml saliency.epsilon={p.epsilon} must be a probability between 0 and 1")
    get_protocol(p.protocol)


# -- the saliency stage -------------------------------------------------------------------------------
PNG_EVERY = 8  # a still of every 8th kept frame
GIF_FPS = 15  # agent steps are 4 emulator frames at 60 Hz: 15 a second is real time
SCALE = 4  # 84x84 -> 336x336, nearest neighbour


def last_checkpoints(root: str | os.PathLike, game: str, count: int) -> list[tuple[int, int, Path]]:
    """[(seed, step, path)] of the last `count` sampled checkpoints of the first seed, each read once first so
    that a bad one stops before any game is played."""
    seed, run = next(iter(checkpoints.sampled_runs(Path(root)).items()))
    found = []
    for step, path in run[-count:]:
        checkpoints.load_for_game(path, game)
        found.append((seed, step, path))
    return found


def checkpoint_saliency(game: str, sampled_root: str | os.PathLike, out_dir: str | os.PathLike, settings) -> None:
    """The saliency stage: for each of `last_checkpoints` (`settings.checkpoints`, params.Saliency, checked by
    `check_settings`), one game played (`episode_stacks`, seeded by `seeds.agent_games(settings.seed, run
    seed)`) and both maps of its stacks. Writes, all at once, <out_dir>/SEED/model_STEP/episode.gif (every
    kept frame), frame_XXXX.png (every PNG_EVERY-th) and <out_dir>/metrics.json (per checkpoint: frames,
    seconds, mean policy and value saliency)."""
    from atarirep.games import resolve_ale_game

    check_settings(settings)
    game = resolve_ale_game(game)  # agents play any game with a ROM
    device = devices.resolve(settings.device)
    found = last_checkpoints(sampled_root, game, settings.checkpoints)
    batch_size = 1024 if device.type == "cuda" else DEFAULT_BATCH
    metrics = {}
    with atomic.atomic_dir(out_dir) as tmp:
        for seed, step, path in found:
            network, _ = checkpoints.load_for_game(path, game)  # a multi-task network: game's value output
            network.to(device)
            play_seed = seeds.agent_games(settings.seed, seed)
            stacks = episode_stacks(
                network, game, settings.protocol, frames=settings.frames, epsilon=settings.epsilon, seed=play_seed
            )
            started = time.perf_counter()
            policy, value = saliency_maps(network, stacks, settings.radius, settings.stride, batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            folder = tmp / str(seed) / f"model_{step}"
            folder.mkdir(parents=True)
            pictures = [
                overlay(stack[-1], pm, vm, scale=SCALE) for stack, pm, vm in zip(stacks, policy, value, strict=True)
            ]
            for index in range(0, len(pictures), PNG_EVERY):
                write_png(pictures[index], folder / f"frame_{index:04d}.png")
            write_gif(pictures, folder / "episode.gif", fps=GIF_FPS)
            metrics[f"{seed}/model_{step}"] = {
                "seed": seed,
                "step": step,
                "frames": len(stacks),
                "seconds": round(seconds, 3),
                "seconds_per_frame": round(seconds / len(stacks), 4),
                "mean_policy_saliency": float(policy.mean()),
                "mean_value_saliency": float(value.mean()),
            }
            print(
                f"{game} seed {seed} step {step}: saliency of {len(stacks)} frames in {seconds:.1f} s "
                f"({seconds / len(stacks):.2f} s a frame on {device.type})",
                flush=True,
            )
        atomic.write_json(tmp / "metrics.json", metrics)
    print(f"saliency of {len(found)} checkpoints of {game} in {out_dir}")
