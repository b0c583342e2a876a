"""B > 1 systems per collector through the whole service: Ray = in-process, resume = uninterrupted."""
from __future__ import annotations

from driver.train import main
from helpers import assert_same_weights, final_weights, rows, write_config

MANY = {"systems_per_collector": 3}


def _strip(rs):
    return [{k: v for k, v in r.items() if not k.startswith("system/") or k == "system/collector_restarts"}
            for r in rs]


def test_many_systems_ray_equals_inprocess(ray_session, tmp_path):
    ray_cfg = write_config(tmp_path, name="ray", train={"epochs": 2}, ray=MANY)
    local_cfg = write_config(tmp_path, name="local", train={"epochs": 2}, ray={**MANY, "inprocess": True})
    assert main(["--config", ray_cfg]) == 0
    assert main(["--config", local_cfg]) == 0
    assert_same_weights(final_weights(tmp_path / "runs" / "ray"), final_weights(tmp_path / "runs" / "local"))
    r = rows(tmp_path / "runs" / "ray")
    assert _strip(r) == _strip(rows(tmp_path / "runs" / "local"))
    assert r[-1]["part1/systems"] == 6 and r[-1]["part1/accepted"] > 40


def test_many_systems_resume_equals_uninterrupted(tmp_path, capsys):
    extra = dict(ray={**MANY, "inprocess": True}, train={"epochs": 3, "generalize_capacity": 50},
                 run={"checkpoint_interval": 5}, model={"dropout": 0.05})
    full = write_config(tmp_path, name="full", **extra)
    assert main(["--config", full]) == 0
    cut = write_config(tmp_path, name="cut", **extra)
    assert main(["--config", cut, "--set", "run.duration=0.001"]) == 0  # stops after epoch 1
    assert main(["--config", cut, "--resume", "auto"]) == 0
    assert "Resumed from epoch 1" in capsys.readouterr().out
    assert_same_weights(final_weights(tmp_path / "runs" / "full"), final_weights(tmp_path / "runs" / "cut"))
    assert _strip(rows(tmp_path / "runs" / "full")) == _strip(rows(tmp_path / "runs" / "cut"))
