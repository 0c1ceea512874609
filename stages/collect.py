"""collect: one labelled dataset (pretrain or probe) of one game of `games`."""
from atarirep import collection, io, params
from atarirep.errors import run_stage


def main(game: str, purpose: str, out_dir: str, summary_path: str) -> None:
    p = params.load("collect")
    dataset = p.dataset(purpose)
    options = dict(steps=dataset.steps, splits_fractions=dataset.splits, purpose=purpose, num_envs=p.num_envs,
                   num_workers=p.num_workers, annotation_set=p.annotations, protocol=p.protocol,
                   collect_mode=p.collect_mode, random_actions=p.random_actions,
                   min_episode_length=p.min_episode_length, entropy_threshold=p.entropy_threshold)
    collection.validate(game, **options)  # every param checked before any emulator runs
    store = collection.collect(game, out_dir, seed=p.seed, progress=True, **options)
    io.write_json(summary_path, collection.summary(store))


if __name__ == "__main__":
    run_stage(main)
