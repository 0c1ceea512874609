"""report: tables and figures of the probe scores of every game and method, from the probe stages' outputs."""
from atarirep import params, reports
from atarirep.errors import run_stage


def main(probes_dir: str, out_dir: str) -> None:
    p = params.load("report")
    results = reports.load_results(probes_dir, games=reports.study_games(p.env, p.games))
    reports.save(out_dir, reports.tables(results), reports.figures(results), reports.summary(results))


if __name__ == "__main__":
    run_stage(main)
