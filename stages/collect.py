"""collect: one labelled dataset (pretrain or probe) of one game of `games`, by the policy collect_policy chose."""

import json
from pathlib import Path

from atarirep import collection
from atarirep.plumbing import atomic, params
from atarirep.plumbing.errors import UserError, run_stage


def main(game: str, purpose: str, out_dir: str, summary_path: str, policy_dir: str) -> None:
    p = params.load("collect")
    policy_file = Path(policy_dir) / "policy.json"
    if not policy_file.is_file():
        raise UserError(f"{policy_file} is missing; run `dvc repro` (collect_policy makes it)")
    policy = json.loads(policy_file.read_text())
    if policy["collect_mode"] != p.collect_mode:
        raise UserError(
            f"{policy_dir} was made for collect_mode {policy['collect_mode']}, params say "
            f"{p.collect_mode}; run `dvc repro` (it remakes collect_policy first)"
        )
    dataset = p.dataset(purpose)
    options = dict(
        steps=dataset.steps,
        splits_fractions=dataset.splits,
        purpose=purpose,
        num_envs=p.num_envs,
        num_workers=p.num_workers,
        annotation_set=p.annotations,
        protocol=p.protocol,
        collect_mode=p.collect_mode,
        random_actions=p.random_actions,
        min_episode_length=p.min_episode_length,
        entropy_threshold=p.entropy_threshold,
        agent_checkpoint=str(Path(policy_dir) / "model.gz") if p.collect_mode == "agent" else None,
        agent_random_prob=p.agent_random_prob,
    )
    collection.validate(game, **options)  # every param checked before any emulator runs
    store = collection.collect(game, out_dir, seed=p.seed, progress=True, **options)
    atomic.write_json(summary_path, collection.summary(store))


if __name__ == "__main__":
    run_stage(main)
