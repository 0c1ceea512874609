"""The whole-params check that runs before any stage writes: each kind of bad value, one line."""

import pytest
import yaml

from atarirep.plumbing import checks, params
from atarirep.plumbing.errors import UserError


def _params(tmp_path, *overrides, edit=None):
    everything = params.compose("conf", list(overrides))
    if edit:
        edit(everything)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(everything, sort_keys=False))
    return path


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_both_profiles_pass(tmp_path, profile):
    checked = checks.check(_params(tmp_path, f"profile={profile}"))
    assert checked.games == (["Pong"] if profile == "default" else params.compose("conf", ["profile=paper"])["games"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["games=[Pong,Skiing]", "annotations=paper"],
            "params.yaml games has 'Skiing', which has no RAM annotations in the 'paper' set; use one of Asteroids, ",
        ),
        (["games=[ALE/Breakout-v5]"], "params.yaml games has 'ALE/Breakout-v5'; write its ALE name 'Breakout'"),
        (["games=[]"], "params.yaml games is empty; list at least one game"),
        (["pretrain.methods=[infonce-stdim]"], "params.yaml pretrain.methods has 'infonce-stdim'; write 'stdim'"),
        (["pretrain.methods=[stdim,stdim]"], "params.yaml pretrain.methods lists stdim more than once"),
        (["probe.baselines=[majority,oracle]"], "params.yaml probe.baselines has 'oracle'; use some of majority, "),
        (
            ["report.methods=[stdim,cpc]", "pretrain.methods=[stdim]"],
            "params.yaml report shows 'cpc', which pretrain.methods does not compute",
        ),
        (
            ["pretrain.batch_size=1"],
            "pretrain.batch_size must be at least 2 (contrastive losses need negatives), not 1",
        ),
        (["probe.lr=0"], "params.yaml probe.lr=0.0 must be positive"),
        (
            ["probe.sampling=uniform"],
            "params.yaml probe.sampling='uniform' is not offered; use one of reference, every_frame",
        ),
        (
            ["pretrain.sampling=uniform"],
            "pretrain sampling='uniform' is not offered; use one of reference, every_frame",
        ),
        (["pretrain.precision=fp16"], "pretrain precision='fp16' is not offered; use one of fp32, bf16"),
        (["probe.keep=first"], "probe keep='first' is not offered; use one of last, best"),
        (
            ["pretrain.method_config.cpc.offset_reduction=max"],
            "cpc offset_reduction='max' is not offered; use one of sum, mean",
        ),
        (["collect.probe.splits.test=0.3"], "split fractions {'train': 0.7, 'val': 0.1, 'test': 0.3} must be positive"),
        (["device=tpu"], "params.yaml device='tpu' must be one of auto, cpu, cuda"),
        (["multitask.algo=PopArt"], "multitask.algo must be one of IMPALA_PopArt, IMPALA, not 'PopArt'"),
        (
            ["multitask.games=[Pong,Breakout]"],
            "IMPALA multi-task games must have the same number of actions (the "
            "policy head is shared), but they have Pong 6, Breakout 4;",
        ),
        (["multitask.games=[Pong,pong]"], "params.yaml multitask.games has 'pong'; write its ALE name 'Pong'"),
        (["multitask.seeds=[]"], "params.yaml multitask.seeds=[] must list seeds >= 0"),
        (["+multitask.impala.lr=2"], "multitask.impala (over train_agent.impala).lr must be in (0, 1)"),
        (
            ["sample_checkpoints.keep=9", "train_agent.ppo.checkpoint_every=1024"],
            "params.yaml sample_checkpoints.keep=9 must be between 1 and the 8 checkpoints a multi-task run makes",
        ),
        # The checkpoints counted are those of the algorithm that trains (IMPALA here: 10240 / 1024 = 10, PPO's 8).
        (
            [
                "sample_checkpoints.keep=11",
                "train_agent.algo=IMPALA",
                "++train_agent.impala.total_steps=10240",
                "++train_agent.impala.checkpoint_every=1024",
                "++train_agent.impala.batch_size=8",
            ],
            "params.yaml sample_checkpoints.keep=11 must be between 1 and the 10 checkpoints a run makes "
            "(train_agent.impala total_steps / checkpoint_every)",
        ),
        (
            ["+train_agent.ppo.entropy_cost=0.01"],
            "params.yaml train_agent.ppo.entropy_cost is a param of IMPALA, not "
            "of this algorithm; set it under train_agent.impala",
        ),
        (["+train_agent.impala.ent_coef=0.01"], "params.yaml train_agent.impala.ent_coef is a param of PPO"),
        (
            ["multitask.games=[Backgammon,VideoCheckers]"],
            "Backgammon's actions (FIRE, RIGHT, LEFT) do not have FIRE as action 1, so protocol 'classic' cannot start",
        ),
    ],
)
def test_each_bad_value_is_one_line_naming_it(tmp_path, overrides, message):
    with pytest.raises(UserError) as err:
        checks.check(_params(tmp_path, *overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_keep_counts_the_training_algorithms_checkpoints(tmp_path):
    # IMPALA makes 10 checkpoints, PPO would make 8: keeping 9 is fine when IMPALA trains.
    checks.check(
        _params(
            tmp_path,
            "sample_checkpoints.keep=9",
            "train_agent.algo=IMPALA",
            "++train_agent.impala.total_steps=10240",
            "++train_agent.impala.checkpoint_every=1024",
            "++train_agent.impala.batch_size=8",
            "multitask.impala.checkpoint_every=1024",
        )
    )


def test_a_method_config_the_method_refuses_is_caught(tmp_path):
    def edit(everything):
        everything["pretrain"]["method_config"]["cpc"]["hidden"] = 3

    with pytest.raises(UserError, match="bad settings for method 'cpc'"):
        checks.check(_params(tmp_path, edit=edit))

    def drop(everything):
        del everything["pretrain"]["method_config"]["vae"]

    with pytest.raises(UserError, match="pretrain.method_config has no entry for vae"):
        checks.check(_params(tmp_path, edit=drop))
