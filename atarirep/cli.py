"""`atarirep COMMAND [ARGS ...]`: the package's command-line tools under one name.

`atarirep X ARGS` runs `python -m atarirep.X ARGS` in this process: the module's own parser reads ARGS
(so `atarirep X --help` is its help) and the exit code is the module's. Modules load only when run, so
`atarirep --help` imports neither torch nor DVC.
"""

from __future__ import annotations

import argparse
import runpy
import sys

# command -> (module, one line for `atarirep --help`)
COMMANDS = {
    "params": ("atarirep.plumbing.params", "rewrite params.yaml from conf/ (with Hydra overrides)"),
    "remote": ("atarirep.plumbing.remote", "check a DVC remote; push and pull check it first"),
    "experiments": ("atarirep.plumbing.experiments", "the multi-game report of finished DVC experiments"),
    "cluster": ("atarirep.plumbing.cluster", "run the stage graph on a Dask cluster"),
    "deps": ("atarirep.plumbing.deps", "check or write dvc.yaml's code deps, computed from each stage's imports"),
}


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS)) + 2
    listing = "\n".join(f"  {name:<{width}}{summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="atarirep",
        description="Atari state representations: the lab's command-line tools.",
        epilog=f"commands:\n{listing}\n\n`atarirep COMMAND --help` shows a command's own options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands below")
    for name in COMMANDS:
        commands.add_parser(name, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and not args[0].startswith("-") and args[0] not in COMMANDS:
        print(
            f"atarirep: unknown command {args[0]!r}; use one of {', '.join(COMMANDS)} (atarirep --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    if not args or args[0] not in COMMANDS:
        _parser().parse_args(args)  # --help; or no command: usage and exit 2
        return
    module, _ = COMMANDS[args[0]]
    sys.argv = [f"{sys.argv[0]} {args[0]}", *args[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
