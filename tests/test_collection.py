import hashlib
import json
import os
import stat

import numpy as np
import pytest

from atarirep import episodes, seeds
from atarirep.collection import collect, summary
from atarirep.envs import LabelledAtariEnv
from atarirep.plumbing.errors import UserError
from atarirep.policies import make_policy
from tests.conftest import SMALL_BREAKOUT

PROBE = {"train": 0.7, "val": 0.1, "test": 0.2}


def _files(folder):
    return {name: (folder / name).read_bytes() for name in ("frames.bin", "steps.csv.gz", "meta.json")}


@pytest.mark.e2e
def test_same_seed_gives_byte_identical_artifacts_with_1_or_2_workers(tmp_path, breakout_probe_dir):
    two = collect(
        "Breakout", tmp_path / "two", splits_fractions=PROBE, purpose="probe", num_workers=2, **SMALL_BREAKOUT
    )
    assert _files(breakout_probe_dir) == _files(two.folder)  # the fixture used 1 worker


def test_another_seed_gives_other_episodes(tmp_path, breakout_probe_dir):
    other = collect(
        "Breakout", tmp_path / "other", splits_fractions=PROBE, purpose="probe", **{**SMALL_BREAKOUT, "seed": 4}
    )
    assert _files(breakout_probe_dir)["frames.bin"] != _files(other.folder)["frames.bin"]


def test_splits_are_disjoint_by_episode_and_follow_the_fractions(breakout_probe_dir):
    store = episodes.load(breakout_probe_dir)
    ids = {name: set(store.split(name).episode_index.tolist()) for name in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    num_kept = store.meta["collected"]["episodes"] - store.meta["collected"]["short_episodes_dropped"]
    assert len(ids["train"]) == int(0.7 * num_kept) and len(ids["val"]) == int(0.8 * num_kept) - int(0.7 * num_kept)


def test_short_episodes_are_dropped(breakout_probe_dir):
    store = episodes.load(breakout_probe_dir)
    for name in store.split_names:
        lengths = np.diff(store.split(name).episode_bounds())
        assert lengths.min() > 1
    train_lengths = np.diff(store.split("train").episode_bounds())
    assert train_lengths.min() > SMALL_BREAKOUT["min_episode_length"]


def test_entropy_filter_drops_breakouts_block_bytes(breakout_probe_dir):
    meta = episodes.load(breakout_probe_dir).meta
    blocks = {f"block_bit_map_{i}" for i in range(30)}
    assert blocks <= set(meta["dropped_variables"])
    assert all(meta["label_entropy"][b] < 0.6 for b in blocks)
    assert {"ball_x", "ball_y", "player_x"} <= set(meta["variables"])
    assert not blocks & set(meta["variables"])


def test_no_test_frame_equals_a_train_or_val_frame(breakout_probe_dir):
    store = episodes.load(breakout_probe_dir)

    def digest(frames):
        return {hashlib.sha1(f.tobytes()).digest() for f in np.asarray(frames)}

    seen = digest(store.split("train").frames) | digest(store.split("val").frames)
    assert not digest(store.split("test").frames) & seen
    assert store.meta["collected"]["duplicate_test_frames_removed"] > 0  # Breakout repeats frames often
    numbers = summary(store)
    assert numbers["test_episodes_dropped_after_dedup"] == store.meta["collected"]["test_episodes_dropped_after_dedup"]


def test_every_episode_starts_with_its_own_reset_frame_and_label(breakout_probe_dir):
    """Replays environment 0 with its seeds: stored frames and labels equal what the env showed."""
    store = episodes.load(breakout_probe_dir)
    steps = store.steps[store.steps.env == 0]
    env = LabelledAtariEnv("Breakout")
    ale_seed, env_rng, policy_rng = seeds.collection_env(SMALL_BREAKOUT["seed"], 1, 0)
    policy = make_policy("random_agent", env.action_space.n, policy_rng)
    obs, info = env.reset(seed=ale_seed)
    env.np_random = env_rng
    replayed = [[(obs, info["labels"])]]
    while len(replayed) < 3:
        obs, _, terminated, truncated, info = env.step(policy.act(obs, False))
        replayed[-1].append((obs, info["labels"]))
        if terminated or truncated:
            obs, info = env.reset()
            replayed.append([(obs, info["labels"])])
    checked = 0
    for env_episode, replayed_episode in enumerate(replayed[:2]):
        rows = steps[steps.env_episode == env_episode]
        if rows.empty:  # dropped as too short
            continue
        split = store.split(rows.split.iloc[0])
        position = int(np.flatnonzero(split.frames.frame_ids == rows.frame.iloc[0])[0])
        assert rows.t.iloc[0] == 0 and rows.action.iloc[0] == -1
        assert np.array_equal(split.frames[position], replayed_episode[0][0])
        assert {v: int(rows[v].iloc[0]) for v in store.variables} == {
            v: replayed_episode[0][1][v] for v in store.variables
        }
        if rows.split.iloc[0] != "test":  # whole episode kept: its last frame is the terminal one
            assert len(rows) == len(replayed_episode)
            assert {v: int(rows[v].iloc[-1]) for v in store.variables} == {
                v: replayed_episode[-1][1][v] for v in store.variables
            }
        checked += 1
    assert checked >= 1


def test_too_few_episodes_says_how_many_steps_are_needed(tmp_path):
    with pytest.raises(
        UserError,
        match=r"collected \d+ episodes longer than 64 frames .* needs at least 4; "
        r"raise steps from 400 to at least \d+",
    ):
        collect("Pong", tmp_path / "out", steps=400, splits_fractions=PROBE, num_envs=2)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(game="Pongg"), "game 'Pongg' has no RAM annotations in the 'latest' set; use one of asteroids"),
        (dict(annotation_set="newest"), "annotation set 'newest' is unknown; use one of latest, paper"),
        (dict(steps=0), "steps must be a positive integer, got 0"),
        (
            dict(splits_fractions={"train": 0.7, "val": 0.2, "test": 0.2}),
            "must be positive and sum to 1 (they sum to 1.1)",
        ),
        (dict(splits_fractions={"train": 0.5, "dev": 0.5}), "unknown: dev"),
        (dict(random_actions="some"), "random_actions 'some' is unknown"),
        (dict(protocol="sticky"), "protocol 'sticky' is unknown; use one of atariari, classic, modern"),
        (dict(collect_mode="agent"), "collect_mode agent needs an agent checkpoint"),
    ],
)
def test_bad_arguments_fail_before_collecting(tmp_path, kwargs, message):
    args = dict(game="Breakout", steps=100, splits_fractions=PROBE, num_envs=2) | kwargs
    with pytest.raises(UserError) as err:
        collect(args.pop("game"), tmp_path / "out", **args)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_path_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create folder .*a_file.*choose a writable output path"):
        collect("Breakout", blocker / "sub" / "out", steps=100, splits_fractions=PROBE, num_envs=2)


def test_lazy_frames_match_a_full_read(breakout_probe_dir):
    train = episodes.load(breakout_probe_dir).split("train")
    everything = np.asarray(train.frames)
    assert everything.shape == (len(train), 1, 210, 160) and everything.dtype == np.uint8
    picks = np.array([5, 0, len(train) - 1, 40, 5])
    assert np.array_equal(train.frames[picks], everything[picks])
    assert np.array_equal(train.frames[3], everything[3])
    assert np.array_equal(train.frames[10:50], everything[10:50])


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_frames_are_reported_on_open(tmp_path, breakout_probe_dir):
    folder = _copy(breakout_probe_dir, tmp_path / "copy")
    data = (folder / "frames.bin").read_bytes()
    (folder / "frames.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"frames.bin is truncated or missing .*run `dvc repro collect`"):
        episodes.load(folder)


def test_corrupt_chunk_is_reported_on_read(tmp_path, breakout_probe_dir):
    folder = _copy(breakout_probe_dir, tmp_path / "copy")
    data = bytearray((folder / "frames.bin").read_bytes())
    data[10:200] = bytes(190)  # same size, garbage inside the first chunk
    (folder / "frames.bin").write_bytes(bytes(data))
    store = episodes.load(folder)
    with pytest.raises(UserError, match="is corrupt .*chunk 0"):
        np.asarray(store.split("train").frames)  # frames.bin holds train episodes first


def test_meta_of_another_format_is_refused(tmp_path, breakout_probe_dir):
    folder = _copy(breakout_probe_dir, tmp_path / "copy")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(UserError, match="meta.json is corrupt or of another format"):
        episodes.load(folder)


def test_artifacts_get_the_usual_permissions(breakout_probe_dir):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(breakout_probe_dir.stat().st_mode) == 0o777 & ~umask


def test_episodes_checks_its_invariants():
    frames = np.zeros((4, 1, 210, 160), np.uint8)
    labels = np.zeros((4, 2), np.int16)
    ok = episodes.Episodes(frames, labels, ("a", "b"), np.array([0, 0, 1, 1], np.int32))
    assert ok.num_episodes == 2 and list(ok.episode_bounds()) == [0, 2, 4]
    with pytest.raises(ValueError, match="contiguous"):
        episodes.Episodes(frames, labels, ("a", "b"), np.array([0, 1, 0, 1], np.int32))
    with pytest.raises(ValueError, match="labels must be"):
        episodes.Episodes(frames, labels.astype(np.int64), ("a", "b"), np.array([0, 0, 1, 1], np.int32))
    with pytest.raises(ValueError, match="frames must be"):
        episodes.Episodes(frames[:, :, :84, :84], labels, ("a", "b"), np.array([0, 0, 1, 1], np.int32))
