"""Helpers shared by the tests (import them with ``from helpers import ...``; fixtures live in conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from aits import Config, load_checkpoint
from aits.model import build_model


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


def perturbed_model(cfg: Config) -> torch.nn.Module:
    """A factor model whose g really depends on the features (an untrained one is ~ constant)."""
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model
