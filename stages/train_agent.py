"""train_agent: one RL run (game x seed), its checkpoints in the published layout and its dvclive logs."""
from atarirep import params
from atarirep.agents import checkpoints, ppo
from atarirep.errors import UserError, run_stage


def main(game: str, run_seed: str, out_dir: str, log_dir: str) -> None:
    p = params.load("train_agent")
    if p.algo not in checkpoints.ALGORITHMS:
        raise UserError(f"train_agent.algo {p.algo!r} is unknown; use one of {', '.join(checkpoints.ALGORITHMS)}")
    config = ppo.config_from(p.ppo)
    ppo.train(game, int(run_seed), out_dir, log_dir, config, study_seed=p.seed, device=p.device, algo=p.algo)


if __name__ == "__main__":
    run_stage(main)
