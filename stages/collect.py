"""collect: labelled episodes of a game (`env`, or one of `games`), one dataset for encoder pretraining,
one for probing."""
from atarirep import annotations, collection, io, params
from atarirep.errors import run_stage


def main(pretrain_dir: str, probe_dir: str, summary_path: str, game: str | None = None) -> None:
    p = params.load("collect")
    if game:  # a game of the multi-game chain must not repeat env
        annotations.check_distinct([p.env, game])
    game = game or p.env
    datasets = {"pretrain": (p.pretrain, pretrain_dir), "probe": (p.probe, probe_dir)}
    options = dict(num_envs=p.num_envs, num_workers=p.num_workers, annotation_set=p.annotations,
                   protocol=p.protocol, collect_mode=p.collect_mode, random_actions=p.random_actions,
                   min_episode_length=p.min_episode_length, entropy_threshold=p.entropy_threshold)
    for purpose, (dataset, _) in datasets.items():  # every param checked before any emulator runs
        collection.validate(game, steps=dataset.steps, splits_fractions=dataset.splits, purpose=purpose, **options)
    stores = {purpose: collection.collect(game, out_dir, steps=dataset.steps, splits_fractions=dataset.splits,
                                          purpose=purpose, seed=p.seed, progress=True,
                                          **options)
              for purpose, (dataset, out_dir) in datasets.items()}
    io.write_json(summary_path, {purpose: collection.summary(store) for purpose, store in stores.items()})


if __name__ == "__main__":
    run_stage(main)
