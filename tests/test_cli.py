"""The `atarirep` command (atarirep.cli): its subcommands run the modules' own `python -m` entry points, run as
subprocesses through the installed script and through `python -m atarirep.cli`."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atarirep import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "atarirep"  # what `pip install -e .` puts beside the interpreter
ENTRY_POINTS = {"script": [str(SCRIPT)], "module": [sys.executable, "-m", "atarirep.cli"]}


def run(entry, *args, cwd=REPO):
    return subprocess.run([*entry, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(params=sorted(ENTRY_POINTS))
def entry(request):
    if request.param == "script":
        assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the project (pip install -e .)"
    return ENTRY_POINTS[request.param]


def test_help_lists_every_command_on_one_line(entry):
    result = run(entry, "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name, (_, summary) in cli.COMMANDS.items():
        assert sum(line.split()[:1] == [name] and line.endswith(summary) for line in lines) == 1, result.stdout
    assert set(cli.COMMANDS) == {"params", "remote", "experiments", "cluster", "deps"}


def test_help_imports_no_torch():
    code = "import sys\nfrom atarirep import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules, 'dvc' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.stdout.splitlines()[-1] == "False False", result.stdout + result.stderr


def test_a_subcommand_shows_its_modules_own_help(entry):
    params = run(entry, "params", "--help")
    assert params.returncode == 0, params.stderr
    assert params.stdout.startswith("usage: python -m atarirep.plumbing.params [-h] [OVERRIDE ...]")
    remote = run(entry, "remote", "--help")
    assert remote.returncode == 0, remote.stderr
    assert "{check,push,pull}" in remote.stdout and "--remote" in remote.stdout


def test_unknown_command_exits_2_with_one_line(entry):
    result = run(entry, "colect", "--steps", "10")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "atarirep: unknown command 'colect'; use one of params, remote, experiments, cluster, deps (atarirep --help)"
    ]


def test_no_command_exits_2(entry):
    result = run(entry)
    assert result.returncode == 2
    assert "the following arguments are required: COMMAND" in result.stderr


def test_a_modules_exit_code_and_error_come_through(entry, tmp_path):
    result = run(entry, "cluster", "repro", "--local", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("error: --local needs at least 1 worker")


def test_params_writes_what_python_m_writes(entry, tmp_path):
    for name in ("via_cli", "via_module"):
        shutil.copytree(REPO / "conf", tmp_path / name / "conf")
    assert run(entry, "params", "env=Breakout", cwd=tmp_path / "via_cli").returncode == 0
    module = subprocess.run(
        [sys.executable, "-m", "atarirep.plumbing.params", "env=Breakout"],
        cwd=tmp_path / "via_module",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert module.returncode == 0, module.stderr
    written = (tmp_path / "via_cli" / "params.yaml").read_text()
    assert written == (tmp_path / "via_module" / "params.yaml").read_text()
    assert yaml.safe_load(written)["env"] == "Breakout"
