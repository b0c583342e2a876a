"""Shared fixtures: one real local Ray per test session (only for tests that ask for it) and a
tiny run config. Plain helper functions live in helpers.py."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from aits import Config, NormScales, build_payload, save_checkpoint

from helpers import FILMED, factor_cfg, perturbed_model, tiny_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs, started once and shut down at the end of the session."""
    import ray

    # address="local": our own Ray, never a `ray start` cluster that happens to run on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_cfg() -> Config:
    return Config.from_dict(tiny_dict())


@pytest.fixture(scope="session")
def quick_board(tmp_path_factory, worker_id):
    """The quick suite of one checkpoint (``perturbed_model(factor_cfg())``, epoch 7) through the command
    line, in its own process (``--workers 1``), with a movie of ``FILMED``: the board test_scoreboard
    checks and compares with a Ray run, and test_report renders. Made once per test session: under
    pytest-xdist the first worker to ask makes it, under a lock in the workers' common folder, and the
    other reads it."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent
    tmp = root / "quick_board"
    with FileLock(str(root / "quick_board.lock")):
        done = tmp / "done.json"
        if not done.exists():
            cfg = factor_cfg()
            ckpt = save_checkpoint(tmp / "a" / "model" / "model_epoch_0007.pt",
                                   build_payload(7, perturbed_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
            out = tmp / "board"
            argv = ["--checkpoint", str(ckpt), "--suite", "quick", "--out", str(out), "--workers", "1", "--movie",
                    "--movie-system", FILMED, "--movie-frames", "8", "--movie-dpi", "40"]
            proc = subprocess.run([sys.executable, "driver/evaluate.py", *argv], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            done.write_text(json.dumps({"ckpt": str(ckpt), "out": str(out), "argv": argv, "stdout": proc.stdout}))
    made = json.loads(done.read_text())
    out = Path(made["out"])
    return {**made, "out": out, "board": json.loads((out / "scoreboard.json").read_text())}


# The files that take longest (Ray jobs, clusters, sweeps, kills and soaks; pytest --durations) run
# first, each in its own order. Under `pytest -n 2 --dist loadfile` (the README's command) a worker
# takes a whole file at a time, so the long ones start early and the short ones fill in at the end.
LONG_FILES = ("test_reliability.py", "test_cluster.py", "test_sweep.py", "test_multinode.py", "test_scoreboard.py",
              "test_train.py", "test_report.py", "test_soak.py", "test_bench.py", "test_collector.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order within a file kept
