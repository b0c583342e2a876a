"""The cluster path: `ray start --head`, then `ray job submit` of driver/train.py, then stop that head.

The head runs in its own process group and temp dir on free ports, so it neither sees nor stops
the session's Ray (`ray stop` would stop every Ray on the machine).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aits import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on 127.0.0.1 with its dashboard on a free port; yields the dashboard URL."""
    dash = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [RAY, "start", "--head", "--block", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
           f"--ray-client-server-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp_dir}"]
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:  # the job API answers once the dashboard is up
            probe = subprocess.run([RAY, "job", "list", "--address", url], env={**env, "RAY_AUTH_MODE": "token"},
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, f"head did not come up: {probe.stderr[-500:]}"
            time.sleep(1)
        yield url, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` tears its processes down
        try:
            head.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of that head is left, and nothing else
        except ProcessLookupError:
            pass
        head.wait()
        log.close()


def test_job_submit_trains_and_checkpoints(ray_head, tmp_path):
    url, env = ray_head
    out = tmp_path / "shared"  # absolute: the job runs in Ray's copy of the working dir
    cmd = [RAY, "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
           "python", "driver/train.py", "--config", "configs/ray.yaml",
           "--set", f"run.output_dir={out}", "--set", "run.name=job", "--set", "train.epochs=2",
           "--set", "train.steps_per_epoch=20", "--set", "model.hidden_dims=[16,16]",
           "--set", "train.generalize_steps=20", "--set", "wandb.mode=disabled"]
    job = subprocess.run(cmd, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout + job.stderr
    assert f"Output: {out / 'job'}" in job.stdout
    assert "Training complete: 2 epochs" in job.stdout
    ckpt = load_checkpoint(out / "job" / "model" / "model_epoch_0002.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["hidden_dims"] == [16, 16]
    assert len(ckpt["extra"]["collectors"]) == 2
    assert len((out / "job" / "metrics.jsonl").read_text().splitlines()) == 2
