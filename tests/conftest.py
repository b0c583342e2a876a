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
