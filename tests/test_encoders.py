"""Encoders: shapes, the space-to-depth conv, orthogonal init, one-file save/load and its errors."""

import io

import pytest
import torch

from atarirep import encoders
from atarirep.plumbing.errors import UserError

SMALL_CONFIGS = {"benchmark": {}, "nature": {}, "impala": {}, "tokenizer": {"vocab_size": 16, "embed_dim": 8}}
INPUTS = {"benchmark": (1, 210, 160), "nature": (4, 84, 84), "impala": (4, 84, 84), "tokenizer": (1, 210, 160)}


def test_benchmark_encoder_global_and_local_shapes_agree_across_entry_points():
    encoder = encoders.BenchmarkEncoder()
    x = torch.rand(3, 1, 210, 160)
    global_features, local_features = encoder.forward_with_local(x)
    assert global_features.shape == (3, 256) and encoder.feature_size == 256
    assert local_features.shape == (3, 128, 11, 8)
    torch.testing.assert_close(encoder(x), global_features)
    torch.testing.assert_close(encoder.local_features(x), local_features)
    assert sum(p.numel() for p in encoder.global_layers[-1].parameters()) == 3456 * 256 + 256


def test_space_to_depth_conv_equals_plain_strided_conv_in_values_and_gradients():
    conv = encoders.SpaceToDepthConv2d(2, 32, 8, stride=4)
    x = torch.rand(2, 2, 210, 160)
    fast = conv(x)
    fast.square().sum().backward()
    fast_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    conv.use_space_to_depth = False
    plain = conv(x)
    plain.square().sum().backward()
    assert fast.shape == plain.shape == (2, 32, 51, 39)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_grad, conv.weight.grad, rtol=1e-3, atol=1e-3)


def test_channels_last_encoder_takes_the_plain_first_conv_and_computes_the_same_function():
    encoder = encoders.BenchmarkEncoder()
    x = torch.rand(3, 1, 210, 160)
    expected = encoder(x)
    conv = encoder.local_layers[0]
    calls = []
    conv.register_forward_hook(lambda module, inputs, output: calls.append(output.is_contiguous()))
    encoder.to(memory_format=torch.channels_last)
    torch.testing.assert_close(encoder(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)
    assert calls == [False]  # the plain conv's channels-last output, not space-to-depth's NCHW


@pytest.mark.parametrize("architecture", list(SMALL_CONFIGS))
def test_each_architecture_maps_its_input_to_feature_size(architecture):
    encoder = encoders.build(architecture, **SMALL_CONFIGS[architecture])
    out = encoder(torch.rand(2, *INPUTS[architecture]))
    assert out.shape == (2, encoder.feature_size)
    assert {"nature": 512, "impala": 256, "benchmark": 256, "tokenizer": 16 * 8}[architecture] == encoder.feature_size


def test_weights_are_orthogonal_with_relu_gain_and_biases_zero():
    encoder = encoders.BenchmarkEncoder()
    weight = encoder.local_layers[2].weight.flatten(1)  # (64, 512): rows orthonormal up to the gain
    gain = torch.nn.init.calculate_gain("relu")
    torch.testing.assert_close(weight @ weight.T, gain**2 * torch.eye(64), atol=1e-4, rtol=0)
    assert not encoder.local_layers[2].bias.any()


def test_preprocess_scales_uint8_to_unit_range_and_refuses_floats():
    frames = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(encoders.preprocess(frames), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(TypeError):
        encoders.preprocess(frames.float())


@pytest.mark.parametrize("architecture", list(SMALL_CONFIGS))
def test_save_then_load_rebuilds_the_same_function_from_the_file_alone(tmp_path, architecture):
    encoder = encoders.build(architecture, **SMALL_CONFIGS[architecture])
    path = tmp_path / "encoder.pt"
    encoders.save(encoder, path, method="stdim", seed=3)
    loaded = encoders.load(path, expect=architecture)
    x = torch.rand(2, *INPUTS[architecture])
    torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)
    assert loaded.meta == {"method": "stdim", "seed": 3} and not loaded.training
    assert encoders.read_meta(path)["config"] == encoder.config
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.pt"]  # no temporary left behind


def test_load_of_a_missing_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(UserError) as err:
        encoders.load(tmp_path / "none.pt")
    assert str(err.value) == (
        f"encoder file {tmp_path / 'none.pt'} is missing; rerun the stage that makes it (`dvc repro`) or `dvc pull` it"
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_load_of_a_damaged_file_is_one_user_error_line(tmp_path, damage):
    path = tmp_path / "encoder.pt"
    encoders.save(encoders.BenchmarkEncoder(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a torch file at all")
    with pytest.raises(UserError) as err:
        encoders.load(path)
    message = str(err.value)
    assert message.startswith(f"encoder file {path} is truncated or corrupt (") and "\n" not in message
    assert message.endswith("rerun the stage that makes it (`dvc repro`) or `dvc pull` it")


def test_load_of_an_unknown_architecture_or_the_wrong_one_is_a_user_error(tmp_path):
    path = tmp_path / "encoder.pt"
    buffer = io.BytesIO()
    torch.save(
        {"format": encoders.FORMAT, "architecture": "transformer", "config": {}, "state_dict": {}, "meta": {}}, buffer
    )
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match=r"has unknown architecture 'transformer' \(known: benchmark, nature"):
        encoders.load(path)
    encoders.save(encoders.NatureCNN(), path)
    with pytest.raises(UserError) as err:
        encoders.load(path, expect="benchmark")
    assert str(err.value) == (
        f"encoder file {path} holds a 'nature' encoder, expected 'benchmark'; point to a benchmark encoder file"
    )


def test_build_of_an_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        encoders.build("resnet50")
    assert str(err.value) == (
        "encoder architecture 'resnet50' is unknown; use one of benchmark, nature, impala, tokenizer"
    )
