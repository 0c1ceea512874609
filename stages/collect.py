"""collect: one labelled dataset (pretrain or probe) of one game of `games`, by the policy collect_policy chose."""

from atarirep import collection
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(game: str, purpose: str, out_dir: str, summary_path: str, policy_dir: str) -> None:
    collection.collect_dataset(game, purpose, out_dir, summary_path, policy_dir, params.load("collect"))


if __name__ == "__main__":
    run_stage(main)
