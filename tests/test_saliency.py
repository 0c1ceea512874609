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
from atarirep.errors import run_stage

REPO = Path(__file__).resolve().parents[1]
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
        pooled = F.avg_pool2d(x[..., :42], 3)                             # (B, 4, 28, 14)
        hidden = torch.tanh((pooled.unsqueeze(1) * self.w).sum((2, 3, 4)))   # (B, 8)
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
        network.actor.weight.mul_(100)     # trained-like logits, not the init's near-uniform ones
    return network


def test_a_region_the_network_ignores_scores_exactly_zero():
    policy, value = saliency.saliency_grids(LeftHalf(), _stacks(2), radius=2, stride=2)
    # Column 2j's mask reaches 8 pixels (4 sigma): points at j >= 25 never touch columns 0..41.
    assert torch.all(policy[:, :, 25:] == 0) and torch.all(value[:, :, 25:] == 0)
    assert torch.all(policy[:, :, 24] > 0) and torch.all(value[:, :, :24].mean((0, 1)) > 0)
    up_policy, up_value = saliency.saliency_maps(LeftHalf(), _stacks(2), radius=2, stride=2)
    assert np.all(up_policy[:, :, 50:] == 0) and np.all(up_value[:, :, 50:] == 0)
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
    for upsampled, grid in zip((policy, value), grids[3]):
        np.testing.assert_allclose(upsampled[:1, ::3, ::3], grid.numpy(), rtol=5e-3, atol=1e-3 * float(grid.max()))
    with pytest.raises(TypeError):
        saliency.saliency_maps(_actor_critic(), stacks.astype(np.float32))


def test_batched_equals_one_at_a_time_and_local_equals_whole_network():
    stacks = _stacks(2)
    network = _actor_critic()
    whole = saliency.saliency_grids(network, stacks, stride=6, batch_size=50, local=False)   # batches span stacks
    single = saliency.saliency_grids(network, stacks, stride=6, batch_size=1, local=False)
    local = saliency.saliency_grids(network, stacks, stride=6, batch_size=50)
    for a, b, c in zip(whole, single, local):
        assert a.max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.max()))
        torch.testing.assert_close(c, a, rtol=1e-3, atol=1e-4 * float(a.max()))


def test_scores_match_the_formula_with_scipy_blur():
    """I (1 - M) + gaussian_filter(I, 3) M with M a Gaussian of sigma r centred on the point, max 1."""
    stack = _stacks(1)[0]
    radius, stride = 2, 2
    policy, value = saliency.saliency_grids(_actor_critic(), stack[None], radius=radius, stride=stride)
    image = stack.astype(np.float64) / 255
    blurred = ndimage.gaussian_filter(image, sigma=(0, 3, 3), mode="reflect")
    forward = saliency.float_forward(_actor_critic().double())   # float64: a score is a small difference
    y, x = np.mgrid[:84, :84]
    for point in [(0, 0), (20, 40), (40, 82), (82, 6), (24, 52)]:
        mask = np.exp(-((y - point[0]) ** 2 + (x - point[1]) ** 2) / (2 * radius ** 2))
        mask[(np.abs(y - point[0]) > 8) | (np.abs(x - point[1]) > 8)] = 0        # scipy's reach: 4 sigma
        perturbed = image * (1 - mask) + blurred * mask
        with torch.no_grad():
            logits, values = forward(torch.tensor(np.stack([image, perturbed])))
        cell = (0, point[0] // stride, point[1] // stride)
        assert float(policy[cell]) == pytest.approx(0.5 * float(((logits[1] - logits[0]) ** 2).sum()), rel=1e-2)
        assert float(value[cell]) == pytest.approx(0.5 * float((values[1] - values[0]) ** 2), rel=1e-2)


def test_blur_is_scipys_gaussian_filter():
    images = torch.from_numpy(_stacks(1).astype(np.float32) / 255)
    expected = ndimage.gaussian_filter(images.numpy().astype(np.float64), sigma=(0, 0, 3, 3), mode="reflect")
    np.testing.assert_allclose(saliency.gaussian_blur(images).numpy(), expected, atol=1e-6)


def test_overlay_png_and_gif(tmp_path):
    frame = _stacks(1)[0, -1]
    policy = np.zeros((84, 84), np.float32)
    policy[10, 20] = 5.0
    value = np.zeros((84, 84), np.float32)
    value[60, 70] = 1e-9
    image = saliency.overlay(frame, policy, value)
    assert image.shape == (336, 336, 3) and image.dtype == np.uint8
    assert image[40, 80, 2] > image[40, 80, 1] and image[240, 280, 0] > image[240, 280, 1]   # each normalised
    assert (image[0:4, 0:4] == image[0, 0]).all()                                              # 4x nearest
    rgb = np.zeros((210, 160, 3), np.uint8)
    assert saliency.overlay(rgb, policy, value, scale=2).shape == (420, 320, 3)
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
    assert np.array_equal(first[1:, :3], first[:-1, 1:])     # consecutive stacks of one game


def test_time_one_frame_returns_seconds():
    assert 0 < saliency.time_one_frame(ActorCritic(4), stride=12) < 60


# -- the stage ----------------------------------------------------------------------------------------
PARAMS = {"seed": 0, "device": "cpu", "games": ["Breakout"],
          "saliency": {"checkpoints": 1, "frames": 9, "radius": 2, "stride": 4, "protocol": "classic",
                       "epsilon": 0.001}}


def _layout(root: Path, params: dict = PARAMS) -> Path:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sampled = root / "sampled" / "Breakout"
    for seed, step in ((0, 50), (0, 100), (1, 100)):
        checkpoints.save(sampled / str(seed) / checkpoints.file_name(step), _actor_critic(seed + step),
                         algo="PPO", protocol="classic", game="Breakout", seed=seed, step=step, frames=4 * step)
    return sampled


def _stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "stages" / "saliency.py"), "Breakout", "sampled/Breakout",
                           "saliency/Breakout"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_stage_writes_overlays_gif_and_metrics(tmp_path):
    _layout(tmp_path)
    result = _stage(tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "saliency" / "Breakout"
    folder = out / "0" / "model_100"          # the first seed's last checkpoint only
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
    checkpoints.save(sampled / "0" / "model_100.gz", ActorCritic(6), algo="PPO", protocol="classic", game="Pong",
                     seed=0, step=100, frames=400)
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
