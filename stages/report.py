"""report: the benchmark's tables and figures for exactly the games, methods and baselines in params."""

from atarirep import reports
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(probes_dir: str, out_dir: str) -> None:
    p = params.load("report")
    results = reports.load_results(probes_dir, p.games, reports.shown_methods(p))
    reports.save(
        out_dir,
        reports.tables(results, annotation_set=p.annotations),
        reports.figures(results),
        reports.summary(results, annotation_set=p.annotations),
    )


if __name__ == "__main__":
    run_stage(main)
