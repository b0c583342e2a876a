"""Helpers shared by the tests (import them with ``from helpers import ...``; fixtures live in conftest.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from aits import Config, NormScales, Samples, build_payload, load_checkpoint
from aits import integrators as I
from aits.model import build_model
from aits.physics import kepler_ic

FILMED = "kepler_e0.9_a1_10P"  # the quick-suite system the shared quick board films (conftest.quick_board)


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


def write_config(tmp_path, name="tiny", **sections) -> str:
    """A tiny run's YAML under ``tmp_path`` writing to ``tmp_path/runs/<name>``; returns its path."""
    d = tiny_dict(**sections)
    d["run"].update(name=name, output_dir=str(tmp_path / "runs"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict:
    """model_state_dict of a run's newest checkpoint."""
    ckpt = load_checkpoint(sorted((run_dir / "model").glob("*.pt"))[-1])
    return ckpt["model_state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit-identical state dicts."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


TIMING = ("system/epoch_time", "system/broadcast_time", "system/samples_per_s", "system/learner_time",
          "system/collect_time")


def strip_timing(rs: list[dict]) -> list[dict]:
    """Metric rows without their wall-clock keys (those differ between otherwise identical runs)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rs]


def factor_cfg(**model) -> Config:
    """A small scale-free factor-mode config (symmetric, one iteration); ``model`` updates its model section."""
    return Config.from_dict({"features": {"feature_type": "scale_free"},
                             "model": {"hidden_dims": [16, 16], "output": "factor", "init_factor": 0.02,
                                       "symmetric_iterations": 1, **model},
                             "run": {"seed": 5}})


def perturbed_model(cfg: Config, scale: float = 0.3, seed: int = 11) -> torch.nn.Module:
    """A factor model whose g really depends on the features (an untrained one is ~ constant): its
    initial weights plus ``scale`` times seeded Gaussian noise."""
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


# ---------------------------------------------------------------- bounded factor models (test_bounded, test_ranges)
M = 2.0  # the bound of the bounded factor
ETA0 = 0.02


def bounded_cfg(timescale: str = "nn", **model) -> Config:
    return Config.from_dict({"features": {"feature_type": "scale_free", "timescale": timescale},
                             "model": {"hidden_dims": [16, 16], "output": "factor", "init_factor": ETA0,
                                       "max_modulation": M, "recursive": True, **model}, "run": {"seed": 2}})


def wild_model(cfg: Config, scale: float = 3.0) -> torch.nn.Module:
    """Weights far from any trained model: the network's output swings over many units."""
    return perturbed_model(cfg, scale, seed=4)


def checkpoint_with_box(cfg: Config, model: torch.nn.Module, box=None) -> dict:
    """A checkpoint of ``model`` carrying the range box ``box`` (``aits.ranges.FeatureRanges``; None: no box)."""
    ck = build_payload(1, model.state_dict(), None, cfg, NormScales().to_dict())
    if box is not None:
        ck["feature_ranges"] = box.to_dict()
    return ck


def forward_back(method, m, x, v, steps: int, eps: float = 0.0) -> float:
    """``steps`` steps of a recursive rule, the velocities reversed, ``steps`` back: the distance to the start
    relative to the system's extent (Plummer softening ``eps``)."""
    st = I.State(m, x.copy(), v.copy(), I.accel(x, m, eps), eps=eps)
    for _ in range(steps):
        method.step(st, math.inf)
    st.v = -st.v
    st.dt = I.recursive_dt(float(method.h(st.x, st.v, st.a, m)), st.dt, method.clip)
    for _ in range(steps):
        method.step(st, math.inf)
    return float(np.abs(st.x - x).max() / np.abs(x).max())


def config_changes(a: str, b: str) -> set[tuple[str, str]]:
    """The (section, key) pairs whose values differ between two config files."""
    da, db = Config.load(a).to_dict(), Config.load(b).to_dict()
    return {(sec, k) for sec in da for k in da[sec] if da[sec][k] != db[sec][k]}


def mixture_factor_cfg() -> Config:
    """The generalist's shape in small: the mixture, a bounded recursive factor, 60-step rollouts."""
    return Config.from_dict({}, ["system.ic=mixture", "system.num_particles=4", "system.dim=3",
                                 "features.feature_type=scale_free", "model.hidden_dims=[8, 8]", "model.output=factor",
                                 "model.init_factor=0.01", "model.max_modulation=3.0", "model.recursive=true",
                                 "model.recursion_clip=1.2", "train.passage_steps=60", "run.seed=3"])


def kepler_samples(es, a=1.0) -> Samples:
    """Samples of two-body Kepler orbits at pericentre, one per eccentricity in ``es``."""
    s = Samples.empty(0, 2, 2, capacity=len(es))
    for i, e in enumerate(es):
        s.m[i], s.x[i], s.v[i], _ = kepler_ic(e, a)
    return s


def classical_model(cfg: Config, scale: float = 0.5, seed: int = 3) -> torch.nn.Module:
    """A bounded factor model with perturbed hidden layers and its last layer zeroed: g = eta0 everywhere, the
    classical rule it contains, built independently of aits.passage.classical_twin."""
    model = perturbed_model(cfg, scale=scale, seed=seed)
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()
    return model


def broken_compile(fn):
    """A stand-in for torch.compile where it cannot build (monkeypatch torch.compile with it): every call of the
    compiled function raises as a missing C++ compiler does."""
    def call(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
    return call
