"""driver/soak.py, shortened: memory of the driver and of every actor stays flat over many Ray epochs."""
from __future__ import annotations

import json

from driver.soak import main, soak

GROWTH_LIMIT_MB = 25  # a leak of one epoch's samples or weights per epoch would pass this within 60 epochs


def test_short_soak_memory_is_bounded(ray_session, tmp_path, capsys):
    report = soak(epochs=80, warmup=20, output_dir=str(tmp_path))
    procs = report["processes"]
    assert set(procs) == {"driver", "learner", "collector 0", "collector 1"}
    assert len({m["pid"] for m in procs.values()}) == 4  # actors in their own processes
    for name, m in procs.items():
        assert m["start_mb"] > 20 and m["growth_mb"] < GROWTH_LIMIT_MB, (name, m)
    rows = (tmp_path / "soak" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == list(range(1, 81))
    assert sum(json.loads(r)["system/collector_restarts"] for r in rows) == 0


def test_soak_cli_rejects_bad_warmup(capsys):
    assert main(["--epochs", "10", "--warmup", "10"]) == 2
    assert capsys.readouterr().err.strip() == "error: --warmup must lie in [1, --epochs)"
