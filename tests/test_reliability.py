"""Faults injected into real runs: dead collectors and learner, a SIGKILLed driver, non-finite numbers."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import actors.learner
import driver.trainer
from actors import Collector, Learner
from aits import Config, auto_norm_scales, latest_checkpoint, load_checkpoint
from driver.train import main, train

from helpers import assert_same_weights, final_weights, rows, write_config

ROOT = Path(__file__).resolve().parents[1]
FAULT_RUN = dict(train={"epochs": 4}, run={"checkpoint_interval": 1})


def fault_cfg(tmp_path, name, **extra) -> Config:
    return Config.load(write_config(tmp_path, name=name, **FAULT_RUN, **extra))


@pytest.fixture(scope="module")
def clean_weights(tmp_path_factory):
    """Final weights of the fault runs' config, run in-process without faults (same as Ray: seeded)."""
    tmp = tmp_path_factory.mktemp("clean")
    assert main(["--config", write_config(tmp, name="clean", **FAULT_RUN), "--set", "ray.inprocess=true"]) == 0
    return final_weights(tmp / "runs" / "clean")


# A line Ray's log monitor forwards from an actor worker: "(Learner pid=1234) ..." (with ", ip=..." on
# a cluster). The session's Ray forwards its actors' output to this process's stderr whenever it arrives,
# so another test's actor can land a line here; the run under test never writes one.
RAY_FORWARDED = re.compile(r"^\((\w+ )?pid=\d+(, ip=[^)]*)?\) ")


def message_lines(stderr: str) -> list[str]:
    """stderr without the progress bar and lines forwarded by Ray from actors; the bar is all it may
    hold besides the messages."""
    lines = [seg for seg in stderr.replace("\r", "\n").splitlines()
             if seg.strip() and not RAY_FORWARDED.match(seg)]
    assert all(line.startswith(("error: ", "warning: ", "epochs:")) for line in lines), lines
    return [line for line in lines if not line.startswith("epochs:")]


def kill_later(backend, actor, delay: float) -> None:
    """SIGKILL the actor's worker process ``delay`` s from now (so: during the next epoch)."""
    pid = backend.get(backend.call(actor, "pid"))
    assert pid != os.getpid()
    threading.Timer(delay, os.kill, (pid, signal.SIGKILL)).start()


# ---------------------------------------------------------------- collector and learner death
def test_killed_collector_is_replaced_and_run_matches_clean_run(ray_session, tmp_path, clean_weights):
    cfg = fault_cfg(tmp_path, "collector_kill")
    pids = []

    def on_epoch(epoch, row, backend, learner, collectors):
        pids.append([backend.get(backend.call(c, "pid")) for c in collectors])
        if epoch == 1:
            kill_later(backend, collectors[1], 0.05)

    assert train(cfg, None, on_epoch=on_epoch) == 0
    run_dir = tmp_path / "runs" / "collector_kill"
    metrics = rows(run_dir)
    assert [r["epoch"] for r in metrics] == [1, 2, 3, 4]
    assert sum(r["system/collector_restarts"] for r in metrics) == 1
    assert metrics[0]["system/collector_restarts"] == 0
    # collector 1 got a new process, collector 0 kept its own
    assert pids[0][0] == pids[-1][0] and pids[0][1] != pids[-1][1]
    # the replacement repeated collect from the saved orbit state: nothing differs from a clean run
    assert_same_weights(final_weights(run_dir), clean_weights)
    assert all(load_checkpoint(p)["epoch"] == i + 1 for i, p in enumerate(sorted((run_dir / "model").iterdir())))


def test_killed_learner_is_rebuilt_from_checkpoint_and_run_matches_clean_run(ray_session, tmp_path, capsys,
                                                                            clean_weights):
    cfg = fault_cfg(tmp_path, "learner_kill")
    pids = []

    def on_epoch(epoch, row, backend, learner, collectors):
        pids.append(backend.get(backend.call(learner, "pid")))
        if epoch == 2 and len(pids) == 2:  # once: epoch 2 is not logged again after the rebuild
            kill_later(backend, learner, 0.05)

    assert train(cfg, None, on_epoch=on_epoch) == 0
    out = capsys.readouterr().out
    assert "learner died during epoch 3" in out and "rebuilt from checkpoint 2, repeating epochs 3-3" in out
    run_dir = tmp_path / "runs" / "learner_kill"
    metrics = rows(run_dir)
    assert [r["epoch"] for r in metrics] == [1, 2, 3, 4]  # epoch 3 logged once, after the repeat
    assert [r["system/learner_restarts"] for r in metrics] == [0, 0, 1, 0]
    assert pids[0] == pids[1] != pids[-1]  # a new learner process
    assert [load_checkpoint(p)["epoch"] for p in sorted((run_dir / "model").iterdir())] == [1, 2, 3, 4]
    assert_same_weights(final_weights(run_dir), clean_weights)


def test_learner_rebuilds_are_bounded_then_stop_with_intact_checkpoint(ray_session, tmp_path, capsys,
                                                                        clean_weights, monkeypatch):
    monkeypatch.setattr(driver.trainer, "MAX_LEARNER_RESTARTS", 0)  # no rebuild allowed: stop at once
    cfg = fault_cfg(tmp_path, "learner_stop")

    def on_epoch(epoch, row, backend, learner, collectors):
        if epoch == 2:
            kill_later(backend, learner, 0.05)

    assert train(cfg, None, on_epoch=on_epoch) == 3
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1
    assert "learner died during epoch 3" in err[0] and "--resume auto" in err[0]
    run_dir = tmp_path / "runs" / "learner_stop"
    assert [load_checkpoint(p)["epoch"] for p in sorted((run_dir / "model").iterdir())] == [1, 2]

    config = write_config(tmp_path, name="learner_stop", **FAULT_RUN)
    assert main(["--config", config, "--resume", "auto"]) == 0
    assert "Resumed from epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in rows(run_dir)] == [1, 2, 3, 4]
    assert_same_weights(final_weights(run_dir), clean_weights)


# ---------------------------------------------------------------- numerical faults
def test_nonfinite_weights_stop_run_and_keep_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    calls = []
    original = Learner.step

    def poisoned(self, *args):
        result = original(self, *args)
        calls.append(1)
        if len(calls) == 3:  # epoch 3's generalize leaves a NaN in the first layer (and the weights it returns)
            with torch.no_grad():
                next(self.model.parameters())[0, 0] = float("nan")
            result["weights"] = self.weights()
        return result

    monkeypatch.setattr(actors.learner.Learner, "step", poisoned)
    config = write_config(tmp_path, name="nan", **FAULT_RUN, ray={"inprocess": True})
    assert main(["--config", config]) == 3
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: model weights became non-finite in epoch 3")
    assert "last good checkpoint: model_epoch_0002.pt" in err[0]
    run_dir = tmp_path / "runs" / "nan"
    ckpts = sorted((run_dir / "model").iterdir())
    assert [p.name for p in ckpts] == ["model_epoch_0001.pt", "model_epoch_0002.pt"]
    for p in ckpts:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(p)["model_state_dict"].values())


def test_learner_never_applies_nonfinite_gradients(tiny_cfg):
    scales = auto_norm_scales(tiny_cfg).to_dict()
    col = Collector(tiny_cfg.to_dict(), scales, 0)
    learner = Learner(tiny_cfg.to_dict(), scales)
    samples, _ = col.collect(learner.weights())
    assert len(samples) >= 4
    bad = samples.take(slice(0, 4))
    bad.x = bad.x.copy()
    bad.x[0, 0, 0] = np.nan  # one non-finite state: NaN features, NaN rel_dE, NaN gradients
    before = learner.weights()
    metrics = learner.step(False, bad)["metrics"]  # batch = all 4 samples: every step sees the NaN
    assert metrics["part2/iterations"] == 20 and metrics["part2/nonfinite_skips"] == 20
    assert metrics["part2/converged"] == 0.0
    assert_same_weights(learner.weights(), before)
    # control: the same samples without the NaN do move the weights
    metrics = learner.step(False, samples.take(slice(1, 4)))["metrics"]
    assert metrics["part2/nonfinite_skips"] == 0
    assert any(not torch.equal(learner.weights()[k], before[k]) for k in before)


def test_collector_nonfinite_state_restarts_orbit(tiny_cfg):
    scales = auto_norm_scales(tiny_cfg).to_dict()
    col = Collector(tiny_cfg.to_dict(), scales, 0)
    weights = Learner(tiny_cfg.to_dict(), scales).weights()
    col.collect(weights)
    state = col.state()
    state["systems"]["x"] = np.full_like(state["systems"]["x"], np.nan)
    restarts = state["systems"]["restarts"]
    col.restore(state)
    samples, metrics = col.collect(weights)
    assert metrics["part1/nonfinite"] == 1 and metrics["part1/orbit_restarts"] >= 1
    assert col.state()["systems"]["restarts"] >= restarts + 1
    assert np.isfinite(samples.x).all() and np.isfinite(col.state()["systems"]["x"]).all()
    # the slot was lost, the orbit's fresh history refills its warm-up before samples ship again
    assert metrics["part1/accepted"] == tiny_cfg.train.steps_per_epoch - 1


# ---------------------------------------------------------------- driver SIGKILL
def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_driver(config: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "driver" / "train.py"), "--config", config,
                             "--resume", "auto", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=child_env(), cwd=ROOT)


def wait_for_epochs(proc, run_dir: Path, n: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not (run_dir / "metrics.jsonl").exists() or len(rows(run_dir)) < n:
        assert proc.poll() is None and time.monotonic() < end, "driver ended before it was killed"
        time.sleep(0.01)


def assert_checkpoints_load(run_dir: Path) -> int:
    """Every checkpoint under model/ loads; returns the newest epoch."""
    files = sorted((run_dir / "model").glob("model_epoch_*.pt"))
    assert files
    for p in files:
        assert load_checkpoint(p)["epoch"] == int(p.stem.split("_")[-1])
    assert latest_checkpoint(run_dir) == files[-1]
    return load_checkpoint(files[-1])["epoch"]


def test_driver_sigkill_at_random_moments_then_resume_completes(tmp_path):
    epochs = 20  # the kills land by epoch 10: each restart runs 1-3 epochs, then dies at a random moment of the next
    # big checkpoints every epoch (~7 MB): kills land in writes too
    d = dict(ray={"inprocess": True}, train={"epochs": epochs}, run={"checkpoint_interval": 1},
             model={"hidden_dims": [512, 512]})
    config = write_config(tmp_path, name="killed", **d)
    run_dir = tmp_path / "runs" / "killed"
    rng = np.random.default_rng(5)
    done = 0
    # kill points counted in epochs, not seconds: an epoch here takes 0.06-0.3 s depending on the machine
    for ahead, delay in zip(rng.integers(1, 4, size=3), rng.uniform(0.0, 0.05, size=3)):
        proc = start_driver(config)
        wait_for_epochs(proc, run_dir, done + ahead)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        done = assert_checkpoints_load(run_dir)
        assert done < epochs

    # kill during a checkpoint write: as soon as the temporary file appears
    proc = start_driver(config)
    end = time.monotonic() + 60
    while not list((run_dir / "model").glob(".model_epoch_*.tmp")):
        assert proc.poll() is None and time.monotonic() < end
    proc.kill()
    proc.wait()
    assert list((run_dir / "model").glob(".model_epoch_*.tmp"))  # the write was cut short
    done = assert_checkpoints_load(run_dir)  # ... and the partial file is not taken for a checkpoint

    proc = start_driver(config)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"Resumed from epoch {done}" in out and f"Training complete: {epochs} epochs" in out
    assert not list((run_dir / "model").glob(".*.tmp"))  # stale temporaries removed
    assert assert_checkpoints_load(run_dir) == epochs
    assert [r["epoch"] for r in rows(run_dir)] == list(range(1, epochs + 1))

    clean = write_config(tmp_path, name="clean", **d)
    assert main(["--config", clean]) == 0
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "runs" / "clean"))


def test_driver_sigkill_with_local_ray_leaves_no_cluster_behind(ray_session, tmp_path):
    config = write_config(tmp_path, name="ray_killed", train={"epochs": 10}, run={"checkpoint_interval": 1})
    run_dir = tmp_path / "runs" / "ray_killed"
    proc = start_driver(config)
    wait_for_epochs(proc, run_dir, 2, timeout=120)
    started = psutil.Process(proc.pid).children(recursive=True)
    core = {p.pid for p in started if p.name() in ("gcs_server", "raylet")}
    assert len(core) == 2  # the driver started its own Ray, not joined the tests' one
    proc.kill()
    proc.wait()
    done = assert_checkpoints_load(run_dir)
    # GCS and raylet die with their driver; Ray's agents do not: end those this test started
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert {p.pid for p in gone} >= core
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in started)
    assert ray_session.is_initialized() and ray_session.cluster_resources()["CPU"] == 2  # tests' Ray intact

    proc = start_driver(config, "--set", "ray.inprocess=true")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"Resumed from epoch {done}" in out and "Training complete: 10 epochs" in out
    assert [r["epoch"] for r in rows(run_dir)] == list(range(1, 11))
