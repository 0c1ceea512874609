"""`atarirep deps`: code deps computed from imports, written into dvc.yaml as text, checked line by line."""

import subprocess
import sys
from pathlib import Path

import pytest

from atarirep.plumbing import deps

DVC_YAML = """\
# a header comment
stages:
  one:  # a stage comment
    cmd: python stages/one.py data/in out
    deps:
      - data/in    # kept with its comment
      - stages/one.py
      - atarirep/stale.py
    params:
      - part
    outs:
      - out
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {
        "stages/one.py": (
            'from atarirep.pkg import mod\nfrom atarirep.plumbing import params\np = params.load("part")\n'
        ),
        "atarirep/__init__.py": "",
        "atarirep/pkg/__init__.py": "",
        "atarirep/pkg/mod.py": "def f():\n    from atarirep import other\n",
        "atarirep/other.py": 'from importlib import resources\nresources.files("atarirep.resources")\n',
        "atarirep/resources/__init__.py": "",
        "atarirep/resources/table.yaml": "a: 1\n",
        "atarirep/plumbing/__init__.py": "",
        "atarirep/plumbing/params.py": "",
        "atarirep/unused.py": "",
        "params.yaml": "part: {x: 1}\n",
        "dvc.yaml": DVC_YAML,
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_closure_follows_function_level_imports_package_inits_and_package_data(repo):
    code = {str(p.relative_to(repo)) for p in deps.code_read_by(repo / "stages/one.py", repo)}
    assert code == {
        "stages/one.py",
        "atarirep/pkg/__init__.py",
        "atarirep/pkg/mod.py",
        "atarirep/other.py",
        "atarirep/resources",
        "atarirep/plumbing/__init__.py",
        "atarirep/plumbing/params.py",
    }


def test_write_keeps_data_deps_and_comments_and_sorts_the_code(repo):
    assert any("deps missing" in p and "extra atarirep/stale.py" in p for p in deps.check(repo))
    text = deps.rewrite(DVC_YAML, repo)
    assert text == DVC_YAML.replace(
        "      - atarirep/stale.py\n",
        "".join(
            f"      - {f}\n"
            for f in (
                "atarirep/other.py",
                "atarirep/pkg/__init__.py",
                "atarirep/pkg/mod.py",
                "atarirep/plumbing/__init__.py",
                "atarirep/plumbing/params.py",
                "atarirep/resources",
            )
        ),
    )
    (repo / "dvc.yaml").write_text(text)
    assert deps.check(repo) == []


def test_a_loaded_section_left_out_of_params_is_named(repo):
    (repo / "dvc.yaml").write_text(deps.rewrite(DVC_YAML, repo).replace("      - part\n", "      - seed\n"))
    assert deps.check(repo) == []  # "part" is not a section of atarirep's params: nothing to judge
    (repo / "stages/one.py").write_text(
        'from atarirep.plumbing import params\np = params.load("probe")\nprint(p.lr, p.seed)\n'
    )
    (repo / "dvc.yaml").write_text(deps.rewrite((repo / "dvc.yaml").read_text(), repo))
    assert deps.check(repo) == ["stage one loads params section 'probe' but declares none of it"]


def test_check_exits_1_with_a_line_per_stage(repo):
    script = Path(sys.executable).parent / "atarirep"  # not `python -m`: the fake atarirep would shadow the tool
    result = subprocess.run([str(script), "deps", "--check"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.splitlines() == deps.check(repo), result.stderr


def test_keys_read_off_a_loaded_section_are_derived_unless_it_is_passed_on_whole(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "from atarirep.plumbing import params\n"
        'p, q = params.load("probe"), params.load("report")\n'
        'run(p.lr, p.seed, params.load("pretrain").epochs)\n'
        "show(q)\n"
    )
    assert deps._loaded_sections(script) == {"probe": {"lr", "seed"}, "report": None, "pretrain": {"epochs"}}
