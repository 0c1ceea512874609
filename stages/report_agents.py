"""report_agents: the trained agents' final returns per game and protocol, and their aggregates over games.

    python stages/report_agents.py EVALUATIONS_ROOT AGENT_PROBES_ROOT MULTITASK_EVALUATIONS_ROOT OUT_DIR

Tables and figures: atarirep.reports.agents.
"""

from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage
from atarirep.reports import agents


def main(evaluations_root: str, agent_probes_root: str, multitask_root: str, out_dir: str) -> None:
    multitask = params.load("multitask")
    agents.report(
        evaluations_root,
        agent_probes_root,
        multitask_root,
        out_dir,
        games=params.load("report").games,
        multitask_games=multitask.games,
        algo=multitask.algo,
        seed=params.load("evaluate_agent").seed,
    )


if __name__ == "__main__":
    run_stage(main)
