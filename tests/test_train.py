"""driver/train.py end to end: outputs, W&B on disk, resume, Ray vs in-process, signals, errors."""
from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from aits import load_checkpoint
from driver.train import main

import wandb_reader
from helpers import assert_same_weights, final_weights, rows, strip_timing, write_config


def test_three_epoch_run_writes_checkpoints_metrics_and_wandb(ray_session, tmp_path, capsys):
    cfg = write_config(tmp_path, wandb={"mode": "offline"})
    assert main(["--config", cfg]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    assert f"Output: {run_dir.resolve()}" in out
    assert "Training complete: 3 epochs, convergence rate:" in out

    # checkpoint_interval 2 and the last epoch
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == ["model_epoch_0002.pt", "model_epoch_0003.pt"]
    ckpt = load_checkpoint(run_dir / "model" / "model_epoch_0003.pt")
    for key in ("epoch", "model_state_dict", "model_state", "optimizer_state_dict", "optimizer_state", "loss",
                "info", "logs", "extra", "config", "config_summary", "history_len", "feature_type", "dtype",
                "norm_scales"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 3 and ckpt["history_len"] == 2 and ckpt["config"]["model"]["hidden_dims"] == [16, 16]
    assert len(ckpt["extra"]["collectors"]) == 2 and ckpt["norm_scales"]["L0"] != 1.0

    metrics = rows(run_dir)
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    for r in metrics:
        # every collector ships steps_per_epoch - history_len samples once nothing is lost
        lost = r["part1/retrain_limit_hits"] + r["part1/nonfinite"]
        assert r["part1/accepted"] == 2 * 20 - lost
        assert r["part2/n_samples"] == r["part1/samples"]  # generalize_capacity 0: this epoch only
        assert r["system/epoch_time"] > 0 and r["system/samples_per_s"] > 0
    assert metrics[0]["part1/warmup_discarded"] == 2 * 2 and metrics[1]["part1/warmup_discarded"] == 0
    rate = 100 * sum(r["part2/converged"] for r in metrics) / 3
    assert f"convergence rate: {rate:.1f}%" in out

    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = wandb_reader.history(runs[0])
    assert len(history) == 3
    for logged, row in zip(history, metrics):
        assert any(k.startswith("part1/") for k in logged) and any(k.startswith("part2/") for k in logged)
        assert any(k.startswith("system/") for k in logged)
        for key in ("epoch", "part1/accepted", "part1/mean_retrains", "part2/loss", "part2/converged"):
            assert logged[key] == pytest.approx(row[key], rel=1e-12), key
    info = wandb_reader.run_info(runs[0])
    assert info["project"] == "AITimeStepper"
    assert info["config"]["train"]["lr"] == 1e-3 and info["config"]["run"]["seed"] == 3


def test_ray_and_inprocess_give_identical_weights(ray_session, tmp_path):
    ray_cfg = write_config(tmp_path, name="ray", train={"epochs": 2})
    local_cfg = write_config(tmp_path, name="local", train={"epochs": 2}, ray={"inprocess": True})
    assert main(["--config", ray_cfg]) == 0
    assert main(["--config", local_cfg]) == 0
    assert_same_weights(final_weights(tmp_path / "runs" / "ray"), final_weights(tmp_path / "runs" / "local"))
    assert strip_timing(rows(tmp_path / "runs" / "ray")) == strip_timing(rows(tmp_path / "runs" / "local"))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, capsys):
    # Replay buffer and dropout on, so learner buffer and torch RNG states must be restored too.
    extra = dict(ray={"inprocess": True}, train={"generalize_capacity": 30, "epochs": 3},
                 run={"checkpoint_interval": 5}, model={"dropout": 0.05})
    full = write_config(tmp_path, name="full", **extra)
    assert main(["--config", full]) == 0

    cut = write_config(tmp_path, name="cut", **extra)
    # run.duration elapses during epoch 1: stop after it with a checkpoint
    assert main(["--config", cut, "--set", "run.duration=0.001"]) == 0
    cut_dir = tmp_path / "runs" / "cut"
    assert [p.name for p in (cut_dir / "model").iterdir()] == ["model_epoch_0001.pt"]
    assert "Stopped after epoch 1: run.duration reached" in capsys.readouterr().out
    assert main(["--config", cut, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "Resumed from epoch 1" in out and "Training complete: 3 epochs" in out
    assert_same_weights(final_weights(tmp_path / "runs" / "full"), final_weights(cut_dir))
    assert strip_timing(rows(tmp_path / "runs" / "full")) == strip_timing(rows(cut_dir))


def test_sigterm_checkpoints_and_resume_continues(tmp_path, capsys):
    cfg = write_config(tmp_path, ray={"inprocess": True}, train={"epochs": 10_000}, run={"checkpoint_interval": 1000})
    handler_before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = main(["--config", cfg])
    finally:
        timer.cancel()
    assert code == 128 + signal.SIGTERM
    out = capsys.readouterr().out
    ckpts = list((tmp_path / "runs" / "tiny" / "model").iterdir())
    assert len(ckpts) == 1
    stopped = load_checkpoint(ckpts[0])["epoch"]
    assert 1 <= stopped < 10_000 and f"Stopped after epoch {stopped}: SIGTERM" in out
    assert len(rows(tmp_path / "runs" / "tiny")) == stopped
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers put back
    assert main(["--config", cfg, "--resume", "auto", "--set", f"train.epochs={stopped + 1}"]) == 0
    assert f"Training complete: {stopped + 1} epochs" in capsys.readouterr().out


def test_config_errors_exit_2_with_one_line_each(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["--config", cfg, "--set", "train.lr=-1", "--set", "ray.num_colectors=3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("error: ") for line in err)
    assert any("ray.num_colectors" in line and "num_collectors" in line for line in err)
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    # a fresh start must not clobber an existing run's checkpoints
    assert main(["--config", cfg, "--set", "ray.inprocess=true", "--set", "train.epochs=1"]) == 0
    assert main(["--config", cfg, "--set", "ray.inprocess=true"]) == 2
    assert "--resume auto" in capsys.readouterr().err


def test_pipeline_is_deterministic_and_resumes_exactly(ray_session, tmp_path, capsys):
    pipe = dict(train={"epochs": 4}, run={"checkpoint_interval": 1})
    ray_cfg = write_config(tmp_path, name="pray", ray={"pipeline": True}, **pipe)
    local_cfg = write_config(tmp_path, name="plocal", ray={"pipeline": True, "inprocess": True}, **pipe)
    plain_cfg = write_config(tmp_path, name="plain", ray={"inprocess": True}, **pipe)
    for cfg in (ray_cfg, local_cfg, plain_cfg):
        assert main(["--config", cfg]) == 0
    runs = tmp_path / "runs"
    assert_same_weights(final_weights(runs / "pray"), final_weights(runs / "plocal"))
    assert strip_timing(rows(runs / "pray")) == strip_timing(rows(runs / "plocal"))
    # Epoch 1 collects with the initial weights either way; later epochs use older weights when pipelined.
    assert strip_timing(rows(runs / "plocal"))[0] == strip_timing(rows(runs / "plain"))[0]
    plain_w, pipe_w = final_weights(runs / "plain"), final_weights(runs / "plocal")
    assert any(not torch.equal(plain_w[k], pipe_w[k]) for k in plain_w)

    cut = write_config(tmp_path, name="pcut", ray={"pipeline": True, "inprocess": True}, **pipe)
    assert main(["--config", cut, "--set", "run.duration=0.001"]) == 0  # stops after epoch 1
    assert load_checkpoint(runs / "pcut" / "model" / "model_epoch_0001.pt")["extra"]["pending_weights"] is not None
    assert main(["--config", cut, "--resume", "auto"]) == 0
    assert_same_weights(final_weights(runs / "plocal"), final_weights(runs / "pcut"))
    assert strip_timing(rows(runs / "plocal")) == strip_timing(rows(runs / "pcut"))


def test_one_learner_call_per_epoch(tmp_path, monkeypatch):
    """Generalize, weights and (on checkpoint epochs) state come back from one Learner.step call."""
    from actors import Learner

    calls = {"step": 0, "weights": 0, "state": 0}
    for name in calls:
        original = getattr(Learner, name)

        def counted(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(Learner, name, counted)
    cfg = write_config(tmp_path, ray={"inprocess": True}, train={"epochs": 3})  # checkpoints at 2 and 3
    assert main(["--config", cfg]) == 0
    # weights: once at the start plus once inside each step; state: inside the 2 checkpoint steps
    assert calls == {"step": 3, "weights": 1 + 3, "state": 2}
