"""train_multitask: one IMPALA run (seed) over the games of `multitask.games`, one network for all of them.

    python stages/train_multitask.py SEED OUT_DIR LOG_DIR

Checkpoints in the published format (OUT_DIR = data/checkpoints/<algo>_<protocol>/multitask/SEED; each file
lists its games and keeps the PopArt statistics), dvclive logs with each game's returns and PopArt statistics
apart (LOG_DIR). A killed run resumes from its last checkpoint.
"""

from atarirep.agents import impala
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(run_seed: str, out_dir: str, log_dir: str) -> None:
    agent, p = params.load("train_agent"), params.load("multitask")
    config = impala.multitask_config(
        agent.impala,
        p.impala,
        algo=p.algo,
        protocol=agent.protocol,
        games=p.games,
        full_action_space=p.full_action_space,
    )
    impala.train(p.games, int(run_seed), out_dir, log_dir, config, study_seed=p.seed, device=p.device, algo=p.algo)


if __name__ == "__main__":
    run_stage(main)
