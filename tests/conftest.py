"""Shared fixtures: one real local Ray per test session (only for tests that ask for it) and a
tiny run config. Plain helper functions live in helpers.py."""
from __future__ import annotations

import logging

import pytest

from aits import Config

from helpers import tiny_dict


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


# The files that take longest (Ray jobs, clusters, sweeps, kills and soaks; pytest --durations) run
# first, each in its own order. Under `pytest -n 2 --dist loadfile` (the README's command) a worker
# takes a whole file at a time, so the long ones start early and the short ones fill in at the end.
LONG_FILES = ("test_reliability.py", "test_cluster.py", "test_sweep.py", "test_multinode.py", "test_scoreboard.py",
              "test_train.py", "test_report.py", "test_soak.py", "test_bench.py", "test_collector.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order within a file kept
