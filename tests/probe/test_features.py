"""Encoders written the way users write them, probed as AtariARI probes them, and left exactly as they were."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from atarirep import ProbeTrainer, encoders, episodes, probe, scores
from atarirep.plumbing.errors import UserError, run_stage
from atarirep.probe.features import Featurizer
from tests.conftest import PROBE_SETTINGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MyEncoder(nn.Module):
    """The AtariARI README's example: convolutions, then `x.view(x.size(0), -1)`, then a linear layer."""

    def __init__(self, feature_size: int = 32):
        super().__init__()
        self.feature_size = feature_size
        self.conv1 = nn.Conv2d(1, 8, 8, stride=4)
        self.conv2 = nn.Conv2d(8, 8, 4, stride=4)
        self.fc = nn.Linear(8 * 12 * 9, feature_size)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.view(x.size(0), -1))


class Flatten(nn.Module):
    """The reference's own `Flatten` (atariari/methods/utils), used by its NatureCNN."""

    def forward(self, x):
        return x.view(x.size(0), -1)


class NormalisedEncoder(nn.Module):
    """BatchNorm and dropout, `.reshape` and `torch.flatten`, as users write them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 8, stride=8)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 26 * 20, 24)

    def forward(self, x):
        x = self.drop(torch.relu(self.norm(self.conv(x))))
        return self.fc(torch.flatten(x.reshape(x.shape[0], 4, 26, 20), 1))


class WithFeatureMaps(MyEncoder):
    """Returns (features, feature map), as encoders with `fmaps=True` do."""

    def forward(self, x):
        local = torch.relu(self.conv1(x))
        return super().forward(x), local


class Raising(MyEncoder):
    def forward(self, x):
        raise ValueError("my encoder wants RGB\nsecond line")


def build(cls):
    torch.manual_seed(0)
    return cls()


def snapshot(module: nn.Module) -> dict:
    """What probing must not change: every tensor's bytes, strides, device and dtype, every submodule's mode."""
    return {
        "tensors": {k: (v.clone(), v.stride(), v.device, v.dtype) for k, v in module.state_dict().items()},
        "modes": [m.training for m in module.modules()],
    }


def assert_unchanged(module: nn.Module, before: dict) -> None:
    after = snapshot(module)
    assert after["modes"] == before["modes"]
    for key, (value, stride, device, dtype) in before["tensors"].items():
        now, now_stride, now_device, now_dtype = after["tensors"][key]
        assert (now_stride, now_device, now_dtype) == (stride, device, dtype), key
        assert torch.equal(now, value), key  # bit-identical, buffers included


def frames(n: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 210, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [MyEncoder, NormalisedEncoder])
def test_a_users_encoder_is_encoded_as_the_reference_feeds_it_and_left_as_it_was(cls):
    encoder = build(cls)
    encoder.train()  # a user may hand it over in train mode
    encoder.fc.eval()  # ... with one submodule switched by hand
    before = snapshot(encoder)
    x = frames()
    features = probe.encode(encoder, x, batch_size=16)
    assert_unchanged(encoder, before)
    with torch.no_grad():  # the reference: eval mode, NCHW float frames
        reference = copy.deepcopy(encoder).eval()(x.float() / 255)
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-5)
    assert features.shape == (40, reference.shape[1]) and features.dtype == torch.float32


def test_channels_last_only_where_a_first_batch_shows_the_same_features():
    with Featurizer(build(MyEncoder), torch.device("cpu")) as featurize:  # `.view` fails on channels-last
        featurize(frames(4))
        assert featurize.layout == torch.contiguous_format
    with Featurizer(build(NormalisedEncoder), torch.device("cpu")) as featurize:  # `.reshape` is layout-blind
        featurize(frames(4))
        assert featurize.layout == torch.channels_last
    ours = encoders.build("benchmark", feature_size=8)
    with Featurizer(ours, torch.device("cpu")) as featurize:  # atarirep's own: known to agree
        featurize(frames(4))
        assert featurize.layout == torch.channels_last
    assert ours.global_layers[-1].weight.is_contiguous() and ours.local_layers[0].weight.is_contiguous()


def test_a_float64_encoder_gets_float64_frames_and_stays_float64():
    encoder = build(MyEncoder).double()
    before = snapshot(encoder)
    features = probe.encode(encoder, frames(8))
    assert_unchanged(encoder, before)
    assert features.dtype == torch.float32 and features.shape == (8, 32)


def test_the_reference_loop_and_the_supervised_baseline_leave_a_users_encoder_alone(breakout_dir):
    data = episodes.load_splits(breakout_dir)
    train, val = data["train"], data["val"]
    encoder = build(NormalisedEncoder)
    before = snapshot(encoder)
    x, y = np.asarray(train.frames[:128]), train.labels[:128, :2]
    probes = probe.fit_probes_reference(x, y, x, y, encoder=encoder, epochs=1, sampling="every_frame")
    probe.predict_reference(probes, np.asarray(val.frames[:16]), encoder=encoder)
    model = probe.fit_supervised(lambda: copy.deepcopy(encoder), x, y, x, y, epochs=1, per_variable=False)
    assert_unchanged(encoder, before)
    assert model.models[0].layout == torch.channels_last  # the copy agreed in channels-last
    view_model = probe.fit_supervised(lambda: build(MyEncoder), x, y, x, y, epochs=1, per_variable=False)
    assert view_model.models[0].layout == torch.contiguous_format  # `.view`: the plain layout, and it trains
    assert probe.predict_supervised(view_model, x[:8]).shape == (8, 2)


def atariari_episodes(split: episodes.Episodes):
    bounds = split.episode_bounds()
    x = torch.from_numpy(np.asarray(split.frames))
    label_dicts = split.label_dicts()
    return (
        [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        [label_dicts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
    )


@pytest.mark.parametrize("cls", [MyEncoder, NormalisedEncoder])
def test_probe_trainer_takes_the_atariari_readme_example_and_encoders_with_batchnorm(breakout_dir, cls):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels), (test_eps, test_labels) = (
        atariari_episodes(data[k]) for k in ("train", "val", "test")
    )
    encoder = build(cls)
    encoder.train()
    before = snapshot(encoder)
    trainer = ProbeTrainer(encoder, representation_len=getattr(encoder, "feature_size", 24), epochs=2, device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    accuracy, f1 = trainer.test(test_eps, test_labels)
    assert_unchanged(encoder, before)
    variables = data["train"].variables
    assert set(f"{v}_f1" for v in variables) <= set(f1) and 0 <= f1["overall_avg_f1"] <= 1
    assert all(0 <= accuracy[f"{v}_acc"] <= 1 for v in variables)


@pytest.mark.parametrize(
    "cls, expected",
    [
        (
            WithFeatureMaps,
            "encoder WithFeatureMaps returned a tuple of 2 (tensor (256, 32), tensor (256, 8, 51, 39)) for "
            "a batch of 256 frames, expected one tensor (256, 32); return only the features (for example the "
            "first output)",
        ),
        (
            Raising,
            "encoder Raising raised ValueError: my encoder wants RGB second line on a batch of (256, 1, 210, 160) "
            "torch.float32 frames; the probe needs a module that maps float frames (B, 1, 210, 160) in [0, 1] to "
            "(B, F) features",
        ),
    ],
)
def test_an_encoder_that_returns_a_tuple_or_raises_is_one_line_naming_what_happened(cls, expected):
    with pytest.raises(UserError) as err:
        probe.encode(build(cls), frames(300))
    assert str(err.value) == expected


def test_a_wrong_feature_width_names_the_shape_seen_and_expected():
    with pytest.raises(UserError) as err:
        probe.encode(build(MyEncoder), frames(10), feature_size=64)
    assert str(err.value) == (
        "encoder MyEncoder returned shape (10, 32) for a batch of (10, 1, 210, 160) frames, "
        "expected (10, 64); flatten to one feature vector per frame (or fix "
        "representation_len/feature_size)"
    )


def export(module: nn.Module, path) -> None:
    program = torch.export.export(
        module.eval(), (torch.rand(2, 1, 210, 160),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, path)


def test_an_exported_encoder_runs_channels_last_where_it_agrees_and_plain_where_it_does_not(tmp_path):
    for cls, layout in ((NormalisedEncoder, torch.channels_last), (MyEncoder, torch.contiguous_format)):
        module = build(cls)
        export(module, tmp_path / "enc.pt2")
        loaded = encoders.load_any(tmp_path / "enc.pt2")
        with Featurizer(loaded, torch.device("cpu")) as featurize:
            features = featurize(frames(4))
            assert featurize.layout == layout
        with torch.no_grad():
            torch.testing.assert_close(features, module.eval()(frames(4).float() / 255), rtol=1e-4, atol=1e-5)


def test_the_probe_stage_probes_a_users_encoder_saved_with_torch_export(breakout_dir, tmp_path, capsys):
    encoder = build(MyEncoder)
    export(encoder, tmp_path / "mine.pt2")
    out = tmp_path / "probes" / "mine"
    settings = dict(method="mine", **PROBE_SETTINGS)
    table = probe.run(breakout_dir, tmp_path / "mine.pt2", out, **settings)
    data = episodes.load_splits(breakout_dir)
    features = {k: probe.encode(encoder, split.frames) for k, split in data.items()}
    probes = probe.fit_probes(
        features["train"],
        data["train"].labels,
        features["val"],
        data["val"].labels,
        lr=3e-3,
        epochs=2,
        sampling="every_frame",
        keep="best",
    )
    expected = probe.predict(probes, features["test"])
    assert table["f1"].tolist() == pytest.approx(
        scores.score(expected, data["test"].labels, data["test"].variables)["f1"].tolist(), abs=0.02
    )
    assert json.loads((out / "metrics.json").read_text())["method"] == "mine"
    # an exported encoder that returns a tuple, and a file that is neither an atarirep encoder nor a torch.export
    # program: one line each, exit code 2, nothing written
    export(build(WithFeatureMaps), tmp_path / "maps.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a model")
    for name, expected in (
        ("maps", "error: encoder maps.pt2 returned a tuple of 2 (tensor (256, 32), tensor "),
        ("junk", f"error: encoder file {tmp_path / 'junk.pt2'} is truncated or corrupt"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_stage(
                lambda name=name: probe.run(breakout_dir, tmp_path / f"{name}.pt2", tmp_path / name, **settings),
                argv=[],
            )
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(expected) and err.count("\n") == 1, err
        assert not (tmp_path / name).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_encoder_on_the_gpu_probed_on_the_cpu_stays_on_the_gpu():
    encoder = build(MyEncoder).cuda()
    before = snapshot(encoder)
    features = probe.encode(encoder, frames(8), device="cpu")
    assert_unchanged(encoder, before)
    assert features.device.type == "cpu"
