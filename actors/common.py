"""Construction shared by the collector and the learner."""
from __future__ import annotations

import contextlib

import torch

from aits import Config, NormScales


def load_config(config: dict | Config) -> Config:
    return config if isinstance(config, Config) else Config.from_dict(config)


def load_scales(scales: dict | NormScales) -> NormScales:
    return scales if isinstance(scales, NormScales) else NormScales(**scales)


@contextlib.contextmanager
def own_torch_rng(holder, attr: str = "torch_rng"):
    """Run with the CPU torch RNG state kept in ``holder.<attr>``.

    Each actor carries its own stream, so collectors sharing one process (in-process
    mode) draw exactly what they would draw in their own Ray worker.
    """
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(getattr(holder, attr))
        try:
            yield
        finally:
            setattr(holder, attr, torch.get_rng_state())
