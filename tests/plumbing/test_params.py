import dataclasses

import pytest
import yaml

from atarirep.plumbing import params
from atarirep.plumbing.errors import UserError


def _write(tmp_path, change):
    everything = yaml.safe_load(open("params.yaml"))
    everything["collect"] = {**everything["collect"], **change}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(everything))
    return path


def test_collect_section_loads_frozen_with_shared_keys():
    p = params.load("collect")
    assert p.seed == 42 and p.annotations == "latest" and p.dataset("probe") is p.probe
    assert p.probe.splits == {"train": 0.7, "val": 0.1, "test": 0.2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_env": 8}, "params.yaml collect has unknown keys num_env; known keys are"),
        ({"num_envs": "eight"}, "params.yaml collect.num_envs='eight' must be of type int"),
        ({"num_envs": True}, "params.yaml collect.num_envs=True must be of type int"),
        ({"probe": {"steps": 10}}, "params.yaml collect.probe is missing splits"),
    ],
)
def test_bad_params_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(UserError) as err:
        params.load("collect", _write(tmp_path, change))
    assert str(err.value).startswith(message)


def test_integers_are_accepted_where_floats_are_expected(tmp_path):
    p = params.load("collect", _write(tmp_path, {"entropy_threshold": 1}))
    assert p.entropy_threshold == 1.0 and isinstance(p.entropy_threshold, float)


def test_missing_file_and_section(tmp_path):
    with pytest.raises(UserError, match="is missing; run stages from the repository root"):
        params.load("collect", tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("env: Pong\n")
    with pytest.raises(UserError, match="has no 'collect' section"):
        params.load("collect", tmp_path / "p.yaml")


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_every_section_loads_under_each_profile(tmp_path, profile):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.compose("conf", [f"profile={profile}"])))
    loaded = {section: params.load(section, path) for section in params.SECTIONS}
    if profile == "paper":  # the reference protocol
        assert (loaded["pretrain"].epochs, loaded["pretrain"].batch_size, loaded["pretrain"].lr) == (100, 64, 3e-4)
        assert (loaded["probe"].epochs, loaded["probe"].patience, loaded["probe"].lr) == (100, 15, 3e-4)
        assert loaded["probe"].supervised_per_variable and loaded["pretrain"].keep == "last"
        assert len(loaded["pretrain"].methods) == 10


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize(
    "config, section",
    [
        ("atarirep.agents.ppo:PPOConfig", ("train_agent", "ppo")),
        ("atarirep.agents.impala:IMPALAConfig", ("train_agent", "impala")),
        ("atarirep.pretraining:TrainConfig", ("pretrain",)),
    ],
)
def test_config_defaults_are_conf_s_reference_values(config, section):
    """conf/ is the one source of the reference values: a default a config also holds must equal it (the paper
    profile departs from nothing). Shared keys (seed, device) are passed by every stage and not compared."""
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    reference = params.compose("conf", ["profile=paper"])
    values = reference
    for key in section:
        values = values[key]
    if section[0] == "train_agent":
        values = {**values, "protocol": reference["train_agent"]["protocol"]}
    compared = {k: v for k, v in _defaults(cls).items() if k in values and k not in params.SHARED_KEYS}
    assert compared, f"{name} shares no keys with {'.'.join(section)}"
    assert compared == {k: values[k] for k in compared}


def test_params_dataclasses_hold_no_defaults():
    """Every params value comes from params.yaml (composed from conf/); a default here would be a second source."""
    for cls in params.SECTIONS.values():
        assert not _defaults(cls), cls
