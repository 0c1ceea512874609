"""Perturbation saliency (atarirep.agents.saliency) and the saliency stage on a tiny checkpoint."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from atarirep.agents import checkpoints, saliency
from atarirep.agents.network import ActorCritic
from atarirep.plumbing.errors import run_stage

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LeftHalf(nn.Module):
    """(logits, value) of a stack's left 42 columns only: a network that ignores the right half.

    Pooling, elementwise products and sums only: each row's outputs are the same bits whatever the batch
    (a matrix product's may not be: BLAS picks kernels by batch size), so an ignored change scores 0.
    """

    num_actions = 3

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(1, 8, 4, 28, 14, generator=generator) / 40)
        self.a = nn.Parameter(torch.randn(3, 8, generator=generator))
        self.v = nn.Parameter(torch.randn(8, generator=generator))

    def forward(self, x):
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        pooled = F.avg_pool2d(x[..., :42], 3)  # (B, 4, 28, 14)
        hidden = torch.tanh((pooled.unsqueeze(1) * self.w).sum((2, 3, 4)))  # (B, 8)
        return (hidden.unsqueeze(1) * self.a).sum(-1), (hidden * self.v).sum(-1)


def _stacks(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random stacks with some sharp blocks: both blur and mask matter."""
    rng = np.random.default_rng(seed)
    stacks = ndimage.zoom(rng.random((n, 4, 12, 12)), (1, 1, 7, 7), order=1) * 200
    stacks[:, :, 20:30, 50:60] = 255
    return np.clip(stacks, 0, 255).astype(np.uint8)


def _actor_critic(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    network = ActorCritic(4).eval()
    with torch.no_grad():
        network.actor.weight.mul_(100)  # trained-like logits, not the init's near-uniform ones
    return network


def test_a_region_the_network_ignores_scores_exactly_zero():
    policy, value = saliency.saliency_grids(LeftHalf(), _stacks(2), radius=2, stride=2)
    # Column 2j's mask reaches 9 pixels (the disc's 1 + the blur's 4 sigma): j >= 26 never touch columns 0..41.
    assert torch.all(policy[:, :, 26:] == 0) and torch.all(value[:, :, 26:] == 0)
    assert torch.all(policy[:, :, 24] > 0) and torch.all(value[:, :, :25].mean((0, 1)) > 0)
    assert torch.any(policy[:, :, 25] > 0)  # column 50's mask: the tail of its disc's side at column 41
    up_policy, up_value = saliency.saliency_maps(LeftHalf(), _stacks(2), radius=2, stride=2)
    assert np.all(up_policy[:, :, 52:] == 0) and np.all(up_value[:, :, 52:] == 0)
    assert np.all(up_policy[:, :, 48] > 0)


def test_shapes_and_dtypes():
    stacks = _stacks(2)
    grids = {}
    for stride, size in ((2, 42), (3, 28), (7, 12)):
        grids[stride] = saliency.saliency_grids(_actor_critic(), stacks[:1], radius=2, stride=stride)
        assert grids[stride][0].shape == grids[stride][1].shape == (1, size, size)
    policy, value = saliency.saliency_maps(_actor_critic(), stacks, radius=2, stride=3)
    assert policy.shape == value.shape == (2, 84, 84)
    assert policy.dtype == value.dtype == np.float32
    assert (policy >= 0).all() and (value >= 0).all() and policy.max() > 0 and value.max() > 0
    # Grid point (i, j) is pixel (i stride, j stride); the map takes its score there.
    # (Other batches than the grid's: equal up to float32 rounding of small differences of outputs.)
    for upsampled, grid in zip((policy, value), grids[3], strict=True):
        np.testing.assert_allclose(upsampled[:1, ::3, ::3], grid.numpy(), rtol=5e-3, atol=1e-3 * float(grid.max()))
    with pytest.raises(TypeError):
        saliency.saliency_maps(_actor_critic(), stacks.astype(np.float32))


@pytest.mark.parametrize("radius, stride", [(2, 6), (3, 7)])
def test_batched_equals_one_at_a_time_and_local_equals_whole_network(radius, stride):
    stacks = _stacks(2)
    network = _actor_critic()
    whole = saliency.saliency_grids(network, stacks, radius, stride, batch_size=50, local=False)  # batches span stacks
    single = saliency.saliency_grids(network, stacks, radius, stride, batch_size=1, local=False)
    local = saliency.saliency_grids(network, stacks, radius, stride, batch_size=50)
    for a, b, c in zip(whole, single, local, strict=True):
        assert a.max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.max()))
        torch.testing.assert_close(c, a, rtol=1e-3, atol=1e-4 * float(a.max()))


def reference_get_mask(center, size, r):
    """Greydanus et al.'s get_mask (visualize_atari's saliency.py), with scipy."""
    y, x = np.ogrid[-center[0] : size[0] - center[0], -center[1] : size[1] - center[1]]
    keep = x * x + y * y <= 1
    mask = np.zeros(size)
    mask[keep] = 1
    mask = ndimage.gaussian_filter(mask, sigma=r)
    return mask / mask.max()


CORNERS_EDGES_AND_INSIDE = [
    (0, 0),
    (0, 83),
    (83, 0),
    (83, 83),
    (0, 40),
    (40, 83),
    (1, 1),
    (2, 82),
    (8, 9),
    (9, 75),
    (40, 40),
    (20, 62),
]


@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_mask_is_the_references_get_mask_inside_and_at_the_edges(radius):
    for point in CORNERS_EDGES_AND_INSIDE:
        expected = reference_get_mask(point, (84, 84), radius)
        mask = saliency.get_mask(point, (84, 84), radius)
        np.testing.assert_allclose(mask, expected, rtol=0, atol=1e-12)
        assert mask.max() == pytest.approx(1, abs=1e-15) and mask.min() >= 0
    # Near an edge the disc's mirror image adds in (scipy's reflect): that mask is not a shifted inner one.
    inner = saliency.get_mask((40, 40), (84, 84), radius)
    corner = saliency.get_mask((0, 0), (84, 84), radius)
    assert not np.allclose(corner[:20, :20], inner[40:60, 40:60])
    # Every grid point's mask, as the saliency computes them (float32), on a non-square frame too.
    for size, stride in (((84, 84), 2), ((80, 80), 5), ((84, 60), 7)):
        rows, cols = saliency.grid(size[0], stride), saliency.grid(size[1], stride)
        masks = saliency.GridMasks(size, rows, cols, radius).to("cpu")
        row, col = torch.meshgrid(torch.arange(len(rows)), torch.arange(len(cols)), indexing="ij")
        every = masks(row.flatten(), col.flatten()).numpy().reshape(len(rows), len(cols), *size)
        for i in {0, 1, len(rows) // 2, len(rows) - 1}:
            for j in {0, len(cols) // 3, len(cols) - 1}:
                expected = reference_get_mask((int(rows[i]), int(cols[j])), size, radius)
                np.testing.assert_allclose(every[i, j], expected, rtol=0, atol=1e-6)
        assert np.allclose(every.max((2, 3)), 1, atol=1e-6)


@pytest.mark.parametrize("local", [True, False])
def test_scores_match_the_references_loop(local):
    """The reference's way: for each point, I (1 - M) + gaussian_filter(I, 3) M with M = get_mask(point) on
    every frame of the stack, through the whole network alone; 0.5 ||out(I) - out(I')||^2."""
    stack = _stacks(1)[0]
    radius, stride = 2, 2
    policy, value = saliency.saliency_grids(_actor_critic(), stack[None], radius=radius, stride=stride, local=local)
    image = stack.astype(np.float64) / 255
    blurred = np.stack([ndimage.gaussian_filter(frame, sigma=3) for frame in image])
    forward = saliency.float_forward(_actor_critic().double())  # float64: a score is a small difference
    for point in [(0, 0), (20, 40), (40, 82), (82, 6), (24, 52), (82, 82), (0, 50)]:
        mask = reference_get_mask(point, (84, 84), radius)
        perturbed = image * (1 - mask) + blurred * mask
        with torch.no_grad():
            logits, values = forward(torch.tensor(np.stack([image, perturbed])))
        cell = (0, point[0] // stride, point[1] // stride)
        # (float32 against float64: a point's tiny score may be off by rounding of the outputs, hence abs.)
        assert float(policy[cell]) == pytest.approx(
            0.5 * float(((logits[1] - logits[0]) ** 2).sum()), rel=1e-2, abs=1e-4 * float(policy.max())
        )
        assert float(value[cell]) == pytest.approx(
            0.5 * float((values[1] - values[0]) ** 2), rel=1e-2, abs=1e-4 * float(value.max())
        )


def test_blur_is_scipys_gaussian_filter():
    images = torch.from_numpy(_stacks(1).astype(np.float32) / 255)
    expected = ndimage.gaussian_filter(images.numpy().astype(np.float64), sigma=(0, 0, 3, 3), mode="reflect")
    np.testing.assert_allclose(saliency.gaussian_blur(images).numpy(), expected, atol=1e-6)


def reference_saliency_on_frame(saliency_map, frame, fudge_factor, channel):
    """Greydanus et al.'s saliency_on_atari_frame for a map already of the frame's size (no resize, sigma 0),
    in float64 (in float32 a pixel's truncation to an integer may differ by 1)."""
    saliency_map = saliency_map.astype(np.float64)
    pmax = saliency_map.max()
    shown = saliency_map.copy()
    shown -= shown.min()
    shown = fudge_factor * pmax * shown / shown.max()
    image = frame.astype("uint16")
    image[:, :, channel] += shown.astype("uint16")
    return image.clip(1, 255).astype("uint8")


def _bump(scale: float) -> np.ndarray:
    """A smooth (84, 84) map peaking at `scale` at (30, 50), scale / 10 far from it."""
    y, x = np.mgrid[:84, :84]
    return (scale * np.maximum(0.1, np.exp(-((y - 30) ** 2 + (x - 50) ** 2) / 50))).astype(np.float32)


def test_overlay_draws_as_the_reference_with_one_fixed_factor():
    frame = _stacks(1)[0, -1] // 2
    policy, value = _bump(0.2), _bump(0.05)[::-1].copy()
    image = saliency.overlay(frame, policy, value, scale=1)
    expected = reference_saliency_on_frame(policy, np.repeat(frame[..., None], 3, axis=2), saliency.POLICY_FUDGE, 2)
    expected = reference_saliency_on_frame(value, expected, saliency.VALUE_FUDGE, 0)
    np.testing.assert_array_equal(image, expected)
    assert (saliency.POLICY_FUDGE, saliency.VALUE_FUDGE) == (500, 600)  # the reference's Pong factors
    np.testing.assert_array_equal(image[..., 1], np.clip(frame, 1, 255))  # green: the frame alone
    # Twice the saliency, twice as bright (up to the integer truncation): one factor, not per frame.
    dark = np.zeros((84, 84), np.uint8)
    zeros = np.zeros((84, 84), np.float32)
    once = saliency.overlay(dark, _bump(0.1), zeros, policy_fudge=1000, scale=1)[..., 2].astype(int)
    twice = saliency.overlay(dark, _bump(0.2), zeros, policy_fudge=1000, scale=1)[..., 2].astype(int)
    lit = once > 1
    assert once.max() == 100 and twice.max() == 200 and lit.sum() > 100
    assert np.all(np.abs(twice[lit] - 2 * once[lit]) <= 1)
    # Maps of different scales are not both stretched to full brightness (the default factors).
    weak = saliency.overlay(dark, _bump(1 / 16), zeros, scale=1)[..., 2]
    strong = saliency.overlay(dark, _bump(1 / 2), zeros, scale=1)[..., 2]
    assert weak.max() == 31 and strong.max() == 250  # 500 x 1/16, 500 x 1/2
    red = saliency.overlay(dark, zeros, _bump(1 / 8), scale=1)
    # Value in red. The reference clips to 1..255 after each map: the black frame is 1 when the value adds 75.
    assert red[..., 0].max() == 76 and red[..., 2].max() == 1
    # Saturation clips at 255; a flat map adds nothing (its minimum is taken away).
    assert saliency.overlay(dark, _bump(10), zeros, scale=1)[..., 2].max() == 255
    assert saliency.overlay(dark, np.full((84, 84), 3, np.float32), zeros, scale=1).max() == 1


def test_overlay_png_and_gif(tmp_path):
    frame = _stacks(1)[0, -1]
    policy = np.zeros((84, 84), np.float32)
    policy[10, 20] = 0.4
    value = np.zeros((84, 84), np.float32)
    value[60, 70] = 0.3
    image = saliency.overlay(frame, policy, value)
    assert image.shape == (336, 336, 3) and image.dtype == np.uint8
    assert image[40, 80, 2] > image[40, 80, 1] and image[240, 280, 0] > image[240, 280, 1]
    assert (image[0:4, 0:4] == image[0, 0]).all()  # 4x nearest
    rgb = np.zeros((210, 160, 3), np.uint8)
    rgb[..., 1] = 90
    drawn = saliency.overlay(rgb, policy, value, scale=2)
    assert drawn.shape == (420, 320, 3) and (drawn[..., 1] == 90).all()  # an RGB frame keeps its colours
    saliency.write_png(image, tmp_path / "frame.png")
    saliency.write_gif([image, image[::-1]], tmp_path / "episode.gif", fps=15)
    with Image.open(tmp_path / "frame.png") as png:
        assert png.format == "PNG" and png.size == (336, 336)
        assert np.array_equal(np.asarray(png.convert("RGB")), image)
    with Image.open(tmp_path / "episode.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 2 and gif.size == (336, 336)


def test_episode_stacks_are_the_games_first_observations_and_repeat():
    network = _actor_critic()
    first = saliency.episode_stacks(network, "Breakout", "classic", frames=6, epsilon=0.001, seed=5)
    again = saliency.episode_stacks(network, "Breakout", "classic", frames=6, epsilon=0.001, seed=5)
    assert first.shape == (6, 4, 84, 84) and first.dtype == np.uint8 and np.array_equal(first, again)
    assert np.array_equal(first[1:, :3], first[:-1, 1:])  # consecutive stacks of one game


def test_time_one_frame_returns_seconds():
    assert 0 < saliency.time_one_frame(ActorCritic(4), stride=12) < 60


# -- the stage ----------------------------------------------------------------------------------------
PARAMS = {
    "seed": 0,
    "device": "cpu",
    "games": ["Breakout"],
    "saliency": {"checkpoints": 1, "frames": 9, "radius": 2, "stride": 4, "protocol": "classic", "epsilon": 0.001},
}


def _layout(root: Path, params: dict = PARAMS) -> Path:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sampled = root / "sampled" / "Breakout"
    for seed, step in ((0, 50), (0, 100), (1, 100)):
        checkpoints.save(
            sampled / str(seed) / checkpoints.file_name(step),
            _actor_critic(seed + step),
            algo="PPO",
            protocol="classic",
            game="Breakout",
            seed=seed,
            step=step,
            frames=4 * step,
        )
    return sampled


def _stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "saliency.py"), "Breakout", "sampled/Breakout", "saliency/Breakout"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_stage_writes_overlays_gif_and_metrics(tmp_path):
    _layout(tmp_path)
    result = _stage(tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "saliency" / "Breakout"
    folder = out / "0" / "model_100"  # the first seed's last checkpoint only
    assert sorted(p.name for p in out.iterdir()) == ["0", "metrics.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["episode.gif", "frame_0000.png", "frame_0008.png"]
    with Image.open(folder / "frame_0008.png") as png:
        assert png.format == "PNG" and png.size == (336, 336)
    with Image.open(folder / "episode.gif") as gif:
        assert gif.n_frames == 9
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["0/model_100"]
    entry = metrics["0/model_100"]
    assert (entry["seed"], entry["step"], entry["frames"]) == (0, 100, 9)
    assert entry["seconds"] > 0 and entry["mean_policy_saliency"] > 0 and entry["mean_value_saliency"] > 0


def _truncate(sampled: Path) -> str:
    path = sampled / "0" / "model_100.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "error: checkpoint sampled/Breakout/0/model_100.gz is truncated or corrupt"


def _foreign(sampled: Path) -> str:
    checkpoints.save(
        sampled / "0" / "model_100.gz",
        ActorCritic(6),
        algo="PPO",
        protocol="classic",
        game="Pong",
        seed=0,
        step=100,
        frames=400,
    )
    return "error: checkpoint sampled/Breakout/0/model_100.gz was trained on Pong, not Breakout"


def _missing(sampled: Path) -> str:
    for path in (sampled / "0").iterdir():
        path.unlink()
    return "error: checkpoint folder sampled/Breakout/0 holds no model_STEP.gz files"


def test_stage_stops_on_a_truncated_checkpoint_with_one_line_and_exit_2(tmp_path):
    expected = _truncate(_layout(tmp_path))
    result = _stage(tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    assert not (tmp_path / "saliency").exists()


@pytest.mark.parametrize("damage", [_foreign, _missing])
def test_stage_stops_on_other_bad_checkpoints(tmp_path, monkeypatch, capsys, damage):
    """In this process (the exit status is run_stage's, as the subprocess test above checks)."""
    expected = damage(_layout(tmp_path))
    spec = importlib.util.spec_from_file_location("saliency_stage", REPO / "stages" / "saliency.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_stage(stage.main, ["Breakout", "sampled/Breakout", "saliency/Breakout"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(expected), err
    assert not (tmp_path / "saliency").exists()
