"""train_agent: one RL run (game x seed), its checkpoints in the published layout and its dvclive logs."""

from atarirep.agents import checkpoints, impala, ppo
from atarirep.plumbing import params
from atarirep.plumbing.errors import UserError, run_stage


def main(game: str, run_seed: str, out_dir: str, log_dir: str) -> None:
    p = params.load("train_agent")
    if p.algo not in checkpoints.ALGORITHMS:
        raise UserError(f"train_agent.algo {p.algo!r} is unknown; use one of {', '.join(checkpoints.ALGORITHMS)}")
    common = dict(study_seed=p.seed, device=p.device, algo=p.algo)
    if p.algo == "PPO":
        ppo.train(game, int(run_seed), out_dir, log_dir, ppo.config_from({**p.ppo, "protocol": p.protocol}), **common)
    else:  # IMPALA on this game alone (several games with PopArt: atarirep.agents.impala.train)
        config = impala.config_from({**p.impala, "protocol": p.protocol, "games": [game]})
        impala.train([game], int(run_seed), out_dir, log_dir, config, **common)


if __name__ == "__main__":
    run_stage(main)
