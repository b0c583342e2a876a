"""Shared fixtures: one real local Ray per test session (only for tests that ask for it) and a
tiny run config."""
from __future__ import annotations

import logging

import pytest

from aits import Config


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs, started once and shut down at the end of the session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def tiny_dict(**sections) -> dict:
    """A small, fast Kepler run (2 collectors, [16, 16] model); ``sections`` update it."""
    d = {
        "run": {"name": "tiny", "seed": 3, "checkpoint_interval": 2},
        "features": {"history_len": 2, "normalize_inputs": "auto"},
        "model": {"hidden_dims": [16, 16], "init_dt": 0.01},
        "train": {"epochs": 3, "steps_per_epoch": 20, "generalize_steps": 20, "generalize_batch_size": 16,
                  "lr": 1e-3, "max_retrain_steps": 200},
        "ray": {"num_collectors": 2, "collector_cpus": 1, "learner_cpus": 0},
        "wandb": {"mode": "disabled"},
    }
    for sec, vals in sections.items():
        d.setdefault(sec, {}).update(vals)
    return d


@pytest.fixture
def tiny_cfg() -> Config:
    return Config.from_dict(tiny_dict())
