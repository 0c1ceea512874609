"""The pretrain stage under torchrun (DDP): `--nnodes 1 --nproc_per_node 2` on CPU with gloo, the one-node case of
docs/scaling.md "One stage over several machines (torchrun)". Averaged gradients, rank 0 alone writing,
and a lost rank failing the run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from atarirep import encoders, episodes, pretraining
from atarirep.plumbing import devices

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_torch_thread")]  # e2e: torchrun, 2 processes

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "stages" / "pretrain.py"
# pixel_pred's loss is a per-sample mean with no noise and no in-batch negatives, so the mean of two ranks'
# gradients over the halves of a global batch is the whole batch's gradient. ST-DIM's negatives are each rank's
# own batch, so its DDP gradient is the mean of the halves' (tests/test_pretraining.py checks that one).
METHOD, BATCH = "pixel_pred", 16  # BATCH: samples per step and process

# torchrun's script in these tests: it runs the stage unchanged, after hooks that, with RECORD, save each rank's
# first batch, its gradients at the first optimizer step, and their norms at every step (to RECORD/rank<r>.pt);
# with FAULT, make rank 1 die (SIGKILL: no cleanup runs) or raise at its 2nd training step.
HOOKED = """\
import os, runpy, signal, sys
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from atarirep import pretraining

rank, fault, record = os.environ["RANK"], os.environ.get("FAULT"), os.environ.get("RECORD")
forward, seen = pretraining.Objective.forward, {"frames": [], "grads": [], "norms": []}

def hooked_forward(self, batch):
    if self.training:
        seen["frames"].append(batch.frames.clone() if not seen["frames"] else None)
        if fault and rank == "1" and len(seen["frames"]) == 2:
            if fault == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected fault on rank 1")
    return forward(self, batch)

def record_gradients(optimizer, args, kwargs):
    grads = [p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]]
    seen["grads"] = seen["grads"] or grads
    seen["norms"].append(torch.stack([g.norm() for g in grads]))

pretraining.Objective.forward = hooked_forward
register_optimizer_step_pre_hook(record_gradients)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
if record:
    torch.save({"frames": seen["frames"][0], "grads": seen["grads"], "norms": torch.stack(seen["norms"])},
               os.path.join(record, f"rank{rank}.pt"))
"""


def _params(folder: Path) -> None:
    pretrain = {
        "methods": [METHOD],
        "epochs": 1,
        "batch_size": BATCH,
        "lr": 1e-3,
        "patience": 1,
        "keep": "last",
        "sampling": "every_frame",
        "precision": "fp32",
        "method_config": {},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "pretrain": pretrain}))


def _torchrun(tmp_path: Path, episodes_dir: Path, **env) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nnodes 1 --nproc_per_node 2 hooked.py stages/pretrain.py ...` in tmp_path/run."""
    (tmp_path / "hooked.py").write_text(HOOKED)
    run = tmp_path / "run"
    run.mkdir()
    _params(run)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            str(tmp_path / "hooked.py"),
            str(STAGE),
            METHOD,
            str(episodes_dir),
            "out",
        ],
        cwd=run,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_gloo_processes_average_their_gradients_and_rank_0_alone_writes(breakout_pretrain_dir, tmp_path):
    """Each rank takes its BATCH-sample slice of every 2 x BATCH global batch (pretraining.epoch_plan), the slices of
    one process's batches of 2 x BATCH, and DDP averages the ranks' gradients: each step's gradient is that one
    process's. The final weights are not compared with a one-process run: Adam amplifies float rounding (one process
    on 1 or 2 threads ends an epoch ~2% of the update apart), and a run without averaging ends only 6-19% apart."""
    (tmp_path / "record").mkdir()
    result = _torchrun(tmp_path, breakout_pretrain_dir, RECORD=str(tmp_path / "record"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run" / "out"
    # Rank 0 alone logs and writes, atomically: one epoch line, the outputs once, nothing beside them.
    assert result.stderr.count("epoch 1: train_loss") == 1, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["encoder.pt", "live", "metrics.json"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "params.yaml"]  # no temp folder or checkpoint
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == metrics["kept_epoch"] == 1 and math.isfinite(metrics["best_val_loss"])
    encoder = encoders.load(out / "encoder.pt")
    assert encoder.meta["method"] == METHOD and encoder.meta["game"] == "Breakout"
    initial = pretraining.build_method(METHOD, seed=0).encoder.state_dict()
    for key, value in encoder.state_dict().items():
        assert not torch.allclose(value, initial[key]), f"{key} did not train"

    ranks = [torch.load(tmp_path / "record" / f"rank{r}.pt") for r in (0, 1)]
    train = episodes.load(breakout_pretrain_dir).split("train")
    steps = len(pretraining.windows(train, 2)) // (2 * BATCH)
    assert [len(r["norms"]) for r in ranks] == [steps, steps]
    torch.testing.assert_close(ranks[0]["norms"], ranks[1]["norms"], rtol=1e-6, atol=0)  # every step averaged
    # The ranks' first batches are the halves of one process's first batch of 2 x BATCH.
    plan = pretraining.epoch_plan(
        pretraining.windows(train, 2), np.random.default_rng(0), 2 * BATCH, False, devices.Distributed()
    )
    source = pretraining._FrameSource(train.frames, torch.device("cpu"), is_streamed=True)
    whole = next(source.batches(plan[:1], torch.Generator()))
    torch.testing.assert_close(torch.cat([r["frames"] for r in ranks]), whole.frames, rtol=0, atol=0)
    method = pretraining.build_method(METHOD, seed=0)
    method.loss(whole)[0].backward()
    for rank in ranks:
        assert len(rank["grads"]) == len(list(method.parameters()))
        for grad, p in zip(rank["grads"], method.parameters(), strict=True):
            torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fault", ["killed", "raises"])
def test_a_lost_rank_fails_the_whole_run_with_nothing_written(breakout_pretrain_dir, tmp_path, fault):
    result = _torchrun(tmp_path, breakout_pretrain_dir, FAULT=fault)
    assert result.returncode != 0
    assert "ChildFailedError" in result.stderr, result.stderr[-3000:]  # torchrun's failure summary
    assert ("Signal 9 (SIGKILL)" if fault == "killed" else "injected fault on rank 1") in result.stderr
    # Lost in epoch 1: no output, no temp folder beside it, no resume checkpoint (one is written per epoch).
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["params.yaml"]
