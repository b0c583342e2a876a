"""Soak: many short Ray epochs with a tiny model; driver and actor memory (RSS) after warm-up and at the end.

    python driver/soak.py [--epochs 300] [--warmup 20] [--output-dir runs_soak] [--wandb offline]

Prints one line per process (MB at the end of epoch ``warmup`` and of the last epoch, growth) and
writes ``<output-dir>/soak/soak.json``. Memory that keeps growing here would end a long run.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import psutil

from aits import Config, build_model
from driver.train import train

MB = 2 ** 20


def soak_config(epochs: int, output_dir: str, wandb_mode: str) -> Config:
    """Tiny Kepler run: [8, 8] model, 10 steps per epoch and collector, checkpoints every 50 epochs."""
    return Config.from_dict({
        "run": {"name": "soak", "output_dir": output_dir, "seed": 1, "checkpoint_interval": 50},
        "features": {"history_len": 2, "normalize_inputs": "auto"},
        "model": {"hidden_dims": [8, 8], "init_dt": 0.01},
        "train": {"epochs": epochs, "steps_per_epoch": 10, "generalize_steps": 10, "generalize_batch_size": 16,
                  "lr": 1e-3, "max_retrain_steps": 100},
        "ray": {"num_collectors": 2, "collector_cpus": 1, "learner_cpus": 0},
        "wandb": {"mode": wandb_mode},
    })


def soak(epochs: int, warmup: int, output_dir: str, wandb_mode: str = "disabled") -> dict:
    """Run the soak. Returns {process: {"pid", "start_mb", "end_mb", "growth_mb"}} plus the run facts;
    "start" is the end of epoch ``warmup`` (allocators and caches settled), "end" the last epoch."""
    cfg = soak_config(epochs, output_dir, wandb_mode)
    marks: dict[str, dict] = {}

    def on_epoch(epoch, row, backend, learner, collectors):
        if epoch not in (warmup, epochs):
            return
        gc.collect()
        pids = {"driver": os.getpid(), "learner": backend.get(backend.call(learner, "pid"))}
        pids.update({f"collector {i}": backend.get(backend.call(c, "pid")) for i, c in enumerate(collectors)})
        for name, pid in pids.items():
            key = "start_mb" if epoch == warmup else "end_mb"
            marks.setdefault(name, {"pid": pid})[key] = psutil.Process(pid).memory_info().rss / MB

    code = train(cfg, None, on_epoch=on_epoch)
    if code != 0:
        raise RuntimeError(f"soak run failed with exit code {code}")
    for m in marks.values():
        m["growth_mb"] = m["end_mb"] - m["start_mb"]
    params = sum(p.numel() for p in build_model(cfg).parameters())
    return {"epochs": epochs, "warmup": warmup, "model_params": params, "processes": marks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20, help="epoch whose end is the memory baseline")
    p.add_argument("--output-dir", default="runs_soak")
    p.add_argument("--wandb", default="disabled", choices=("disabled", "offline"))
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.epochs:
        print("error: --warmup must lie in [1, --epochs)", file=sys.stderr)
        return 2
    report = soak(args.epochs, args.warmup, args.output_dir, args.wandb)
    print(f"soak: {report['epochs']} epochs, model {report['model_params']} parameters; RSS in MB "
          f"(after epoch {args.warmup} -> after epoch {args.epochs})")
    for name, m in report["processes"].items():
        print(f"  {name:12s} pid {m['pid']:>7d}  {m['start_mb']:8.1f} -> {m['end_mb']:8.1f}  "
              f"({m['growth_mb']:+.1f})")
    out = Path(args.output_dir) / "soak" / "soak.json"
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
