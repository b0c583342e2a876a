"""Training health: a collapsing or stalled policy is seen and stops the run with one line;
random systems restart after system.restart_after crossing times."""
from __future__ import annotations

import json

import numpy as np
import torch

from aits import Config, Stepper
from aits.collect import STALL_WINDOW, collect_trajectory, retrain_slot
from aits.model import build_model
from aits.norm import auto_norm_scales
from aits.physics import crossing_time
from aits.stepper import make_optimizer
from aits.systems import Systems
from driver import train


def test_run_built_to_collapse_warns_and_stops_with_one_line(tmp_path, capsys):
    """A policy whose dt is 1e-9 (accepted every time: energy is kept trivially) is a collapse."""
    cfg = {"run": {"name": "collapse", "output_dir": str(tmp_path)}, "system": {"ic": "random", "num_particles": 3,
           "softening": 0.05}, "model": {"hidden_dims": [8], "init_dt": 1e-9},
           "train": {"epochs": 12, "steps_per_epoch": 3, "generalize_steps": 2},
           "ray": {"inprocess": True, "num_collectors": 1}, "wandb": {"mode": "disabled"}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert train.main(["--config", str(path)]) == 3
    out = capsys.readouterr()
    assert out.out.count("warning: epoch") + out.err.count("warning: epoch") == 5
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training collapsed" in errors[0] and "softening" in errors[0]
    rows = [json.loads(line) for line in (tmp_path / "collapse" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["part1/dt_over_classical"] < 1e-6 for r in rows)


def test_healthy_kepler_run_reports_its_eta():
    cfg = Config.from_dict({"features": {"feature_type": "scale_free"},
                            "model": {"hidden_dims": [8], "output": "factor", "init_factor": 0.02},
                            "train": {"steps_per_epoch": 20}})
    stepper, model = Stepper(cfg, auto_norm_scales(cfg)), build_model(cfg)
    _, metrics = collect_trajectory(model, make_optimizer(model, cfg), Systems.for_collector(cfg, 0, 2), stepper, cfg)
    # an untrained factor model is the classical rule with eta = init_factor
    assert abs(metrics["part1/dt_over_classical"] - 0.02) < 2e-3


def test_unsoftened_random_retrain_loop_stalls_instead_of_looping_for_ever():
    """The seed's random 4-body setting: rel_dE(dt) has a stationary point above the system's
    timescale and the unlimited retrain loop sat there for ever; now the slot is given up."""
    torch.manual_seed(0)
    cfg = Config.from_dict({"system": {"ic": "random", "num_particles": 4}, "model": {"hidden_dims": [64, 64]},
                            "train": {"max_retrain_steps": 0}})
    stepper, model = Stepper(cfg, auto_norm_scales(cfg)), build_model(cfg)
    systems = Systems.for_collector(cfg, 0, 1)
    slot = retrain_slot(model, make_optimizer(model, cfg), stepper, stepper.prepare(systems.batch()), cfg)
    assert not slot.accepted[0] and slot.stalled == 1
    assert slot.retrains[0] % STALL_WINDOW == 0 and slot.retrains[0] >= STALL_WINDOW


def test_random_systems_restart_after_their_crossing_times():
    cfg = Config.from_dict({"system": {"ic": "random", "num_particles": 3, "softening": 0.1, "restart_after": 2.0}})
    systems = Systems.for_collector(cfg, 0, 1)
    tc = crossing_time(systems.m[0], systems.x[0])
    assert systems.period[0] == tc
    first = systems.x[0].copy()
    dt = 0.3 * tc
    restarted = [len(systems.advance(np.array([0]), systems.x[[0]], systems.v[[0]], np.array([dt])))
                 for _ in range(7)]
    assert restarted == [0, 0, 0, 0, 0, 0, 1]  # 7 * 0.3 = 2.1 crossing times
    assert systems.restarts[0] == 1 and not np.array_equal(systems.x[0], first)
