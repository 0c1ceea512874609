"""collect_policy: who acts while `collect` records a game's episodes, as a small output of its own.

random_agent: policy.json only. agent: policy.json and model.gz, the first seed's last sampled
checkpoint. In random mode the output does not change when the agent is retrained, so the collected
episodes (and everything after them) stay valid; in agent mode they follow the checkpoint.
"""

import shutil
from pathlib import Path

from atarirep.agents import checkpoints
from atarirep.plumbing import atomic, params
from atarirep.plumbing.errors import run_stage


def main(sampled_game_dir: str, out_dir: str) -> None:
    collect, agents = params.load("collect"), params.load("train_agent")
    with atomic.atomic_dir(out_dir) as tmp:
        policy = {"collect_mode": collect.collect_mode}
        if collect.collect_mode == "agent":
            seed = agents.seeds[0]
            step, path = checkpoints.list_run(Path(sampled_game_dir) / str(seed))[-1]
            checkpoints.load_network(path)  # a damaged or foreign file stops here
            shutil.copy2(path, tmp / "model.gz")
            policy.update(checkpoint=str(path), seed=seed, step=step, random_prob=collect.agent_random_prob)
        atomic.write_json(tmp / "policy.json", policy)


if __name__ == "__main__":
    run_stage(main)
