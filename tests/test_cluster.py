"""The cluster path: `ray start --head`, `ray job submit` of driver/train.py, a stopped or killed job
resubmitted with `--resume auto`, then that head stopped.

The head runs in its own process group and temp dir on free ports, so it neither sees nor stops
the session's Ray (`ray stop` would stop every Ray on the machine). The head, and so the job's
`python`, use the interpreter that runs the tests (its folder first on PATH), however the suite was
started (`.venv/bin/python -m pytest` without activating included).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from aits import load_checkpoint
from driver.train import main

from helpers import assert_same_weights, final_weights, rows, write_config

REPO = Path(__file__).resolve().parents[1]
BIN = os.path.dirname(sys.executable)  # not resolved: a venv's bin/python is a link out of the venv
RAY = os.path.join(BIN, "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with its dashboard on a free port; yields (dashboard URL, client env)."""
    tmp = tmp_path_factory.mktemp("head")
    dash = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # the job's `python` is the one under test
    cmd = [RAY, "start", "--head", "--block", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
           f"--ray-client-server-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp_dir}"]
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    client = {**env, "RAY_AUTH_MODE": "token"}
    try:
        deadline = time.monotonic() + 120
        while True:  # the job API answers once the dashboard is up
            probe = subprocess.run([RAY, "job", "list", "--address", url], env=client, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, (tmp / "head.log").read_text()
            assert time.monotonic() < deadline, f"head did not come up: {probe.stderr[-500:]}"
            time.sleep(1)
        yield url, client
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


def submit(url: str, env: dict, job_id: str, *args: str, wait: bool = True):
    """`ray job submit` of driver/train.py; retried while the job agent is not up yet."""
    cmd = [RAY, "job", "submit", "--address", url, "--submission-id", job_id, "--working-dir", str(REPO), "--",
           "python", "driver/train.py", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(30):
        job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent to submit job" not in job.stdout + job.stderr:
            return job
        time.sleep(1)
    return job


def wait_for_rows(run_dir: Path, n: int, proc, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not (run_dir / "metrics.jsonl").exists() or len(rows(run_dir)) < n:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < end, "job did not reach its epochs"
        time.sleep(0.2)


def job_config(tmp_path, name: str, epochs: int) -> str:
    """An absolute config path (the job runs in Ray's copy of the working dir) writing under tmp_path."""
    # 60 steps per epoch: an epoch outlasts the start-up of the `ray job stop` command
    return write_config(tmp_path, name=name, train={"epochs": epochs, "steps_per_epoch": 60},
                        run={"checkpoint_interval": 1})


def test_job_submit_trains_and_checkpoints(ray_head, tmp_path):
    url, env = ray_head
    out = tmp_path / "shared"  # absolute: the job runs in Ray's copy of the working dir
    job = submit(url, env, "aits-plain", "--config", "configs/ray.yaml", "--set", f"run.output_dir={out}",
                 "--set", "run.name=job", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=20",
                 "--set", "model.hidden_dims=[16,16]", "--set", "train.generalize_steps=20",
                 "--set", "wandb.mode=disabled")
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout + job.stderr
    assert f"Output: {out / 'job'}" in job.stdout
    assert "Training complete: 2 epochs" in job.stdout
    ckpt = load_checkpoint(out / "job" / "model" / "model_epoch_0002.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["hidden_dims"] == [16, 16]
    assert len(ckpt["extra"]["collectors"]) == 2
    rows = [json.loads(line) for line in (out / "job" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # the laptop config's passage objective ran in the job's learner, on finite rollouts
    assert all(math.isfinite(r["passage/loss"]) and r["passage/skipped"] == 0 for r in rows)


def test_stopped_then_killed_job_resubmitted_with_resume_auto_matches_clean_run(ray_head, tmp_path):
    """`ray job stop` the first job, SIGKILL the driver of the resubmitted one, resubmit again: the
    third job completes the run with a clean run's weights and every metrics row once."""
    url, env = ray_head
    # enough epochs that `ray job stop` (seconds on a loaded machine) lands before the run ends: at 20 a
    # run on 2 cores shared with evaluations finished its last epoch first
    epochs = 40
    cfg = job_config(tmp_path, "job", epochs)
    run_dir = tmp_path / "runs" / "job"

    first = submit(url, env, "aits-stop", "--config", cfg, wait=False)
    wait_for_rows(run_dir, 1, first)
    stop = subprocess.run([RAY, "job", "stop", "--address", url, "aits-stop"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    out, _ = first.communicate(timeout=120)  # `ray job submit` itself exits 0 for a stopped job
    assert "was stopped" in out and f"Training complete: {epochs} epochs" not in out, out[-3000:]
    stopped_at = len(rows(run_dir))
    assert stopped_at < epochs, out[-3000:]

    second = submit(url, env, "aits-kill", "--config", cfg, "--resume", "auto", wait=False)
    wait_for_rows(run_dir, stopped_at + 1, second)
    drivers = [p for p in psutil.process_iter(["cmdline"])  # the job's python, not the submit client
               if "driver/train.py" in (p.info["cmdline"] or []) and cfg in (p.info["cmdline"] or [])
               and "submit" not in (p.info["cmdline"] or [])]
    assert len(drivers) == 1, drivers
    drivers[0].kill()
    out, _ = second.communicate(timeout=120)
    assert "Resumed from epoch" in out and "failed" in out.lower(), out[-3000:]
    assert len(rows(run_dir)) < epochs

    third = submit(url, env, "aits-resume", "--config", cfg, "--resume", "auto")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-2000:]
    assert "Resumed from epoch" in third.stdout and f"Training complete: {epochs} epochs" in third.stdout
    assert [r["epoch"] for r in rows(run_dir)] == list(range(1, epochs + 1))

    assert main(["--config", cfg, "--set", "run.name=clean", "--set", "ray.inprocess=true"]) == 0
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "runs" / "clean"))
