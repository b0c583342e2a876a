"""The project functions one accepted sample passes through, from a collector's step to the learner's
optimiser step, measured by a trace of a real one-epoch in-process training (docs/DESIGN.md §4).

    python -m driver.sample_path          # prints the functions in order and their count

The run is ``driver.train.train`` on a tiny config (``ray.inprocess``: the actors in this process, the
trainer's own code path; one collector stepping one system, so the batch is the sample's own), run
twice with the same seed: the first run finds the sample (the first one collector 0 ships), the
second is traced with ``sys.setprofile``. A project function (a function or method of ``aits/``,
``actors/`` or ``driver/``; comprehensions and dunder methods aside) is on the sample's path when,
after the collector's ``Systems.batch`` first hands the sample's state out and before the
learner's ``Learner.step`` returns,

- one of its arguments or local variables, or its return value, holds the sample's positions or
  velocities (a numpy array or tensor, or a tuple, list, dict or dataclass holding one), or
- it holds a tensor computed from them: returned by a function on the path, or reaching one of
  those through its autograd graph (the loss), or
- it calls the optimiser's ``step`` under a function on the path (the update).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from aits import Config

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(str(ROOT / d) + "/" for d in ("aits", "actors", "driver"))
SELF = str(Path(__file__).resolve())
LIMIT = 25  # the goal of issue 20: at most this many functions


def tiny_config(out_dir: str) -> Config:
    """One collector with one system (scale-free factor model, the recursion), one epoch; the energy
    band set so that collect retrains and generalize steps (the path reaches the optimiser)."""
    return Config.from_dict({
        "run": {"name": "path", "seed": 1, "output_dir": out_dir, "checkpoint_interval": 1},
        "features": {"feature_type": "scale_free", "history_len": 0},
        "model": {"hidden_dims": [8, 8], "output": "factor", "init_factor": 0.05, "recursive": True,
                  "max_modulation": 2.0},
        "system": {"ic": "kepler", "e_min": 0.5, "e_max": 0.6},
        "train": {"epochs": 1, "steps_per_epoch": 4, "generalize_steps": 3, "generalize_batch_size": 4,
                  "generalize_min_samples": 1, "energy_threshold": 5e-5, "E_lower": 1e-7, "E_upper": 1e-6,
                  "max_retrain_steps": 200, "lr": 1e-2},
        "ray": {"inprocess": True, "num_collectors": 1, "systems_per_collector": 1, "learner_cpus": 1},
        "wandb": {"mode": "disabled"},
    })


def _train(cfg: Config) -> None:
    from driver.train import train

    if train(cfg, None) != 0:
        raise SystemExit("sample_path: the tiny training failed")


def _is_project(code) -> bool:
    name = code.co_name
    return (code.co_filename.startswith(PROJECT) and code.co_filename != SELF and not name.startswith("<")
            and not (name.startswith("__") and name.endswith("__")))


def _qualname(frame) -> str:
    code = frame.f_code
    owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
    if owner is not None:
        cls = owner if isinstance(owner, type) else type(owner)
        for klass in cls.__mro__:  # the class that defines the method, not the instance's
            fn = klass.__dict__.get(code.co_name)
            if getattr(getattr(fn, "__func__", fn), "__code__", None) is code:
                return f"{klass.__name__}.{code.co_name}"
    return f"{Path(code.co_filename).stem}.{code.co_name}" if code.co_name != "call" else "backend.call"


class PathTracer:
    """The profile hook: which project functions touch the sample (see the module docstring)."""

    def __init__(self, x: np.ndarray, v: np.ndarray):
        self.marks = [np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(v, dtype=np.float64)]
        self.shape = x.shape
        self.derived: dict[int, torch.Tensor] = {}  # id -> tensor computed from the sample (kept alive)
        self.grad_fns: set[int] = set()
        self.started = self.done = False
        self.seq = 0
        self.frames: dict[int, list] = {}  # id(frame) -> [seq, name, touched]
        self.path: dict[str, int] = {}  # function -> first call sequence number

    # ---------------------------------------------------------------- what carries the sample
    def _holds_value(self, a) -> bool:
        if isinstance(a, torch.Tensor):
            if a.dtype != torch.float64 or a.dim() < 2 or tuple(a.shape[-2:]) != self.shape or a.is_sparse:
                return False
            a = a.detach().cpu().numpy()
        if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.ndim < 2 or a.shape[-2:] != self.shape:
            return False
        rows = a.reshape(-1, *self.shape)
        return any(bool((rows == mk).all(axis=(1, 2)).any()) for mk in self.marks)

    def _from_sample(self, t: torch.Tensor) -> bool:
        if id(t) in self.derived and self.derived[id(t)] is t:
            return True
        todo, seen = [t.grad_fn], 0
        while todo and seen < 400:  # a loss made of the sample's rel_dE: its graph reaches their grad_fn
            fn = todo.pop()
            seen += 1
            if fn is None:
                continue
            if id(fn) in self.grad_fns:
                return True
            todo.extend(f for f, _ in fn.next_functions)
        return False

    def carries(self, obj, depth: int = 0) -> bool:
        if isinstance(obj, torch.Tensor):
            return self._holds_value(obj) or self._from_sample(obj)
        if isinstance(obj, np.ndarray):
            return self._holds_value(obj)
        if depth >= 3:
            return False
        if isinstance(obj, (tuple, list)):
            return any(self.carries(o, depth + 1) for o in obj[:16])
        if isinstance(obj, dict):
            return any(self.carries(o, depth + 1) for o in list(obj.values())[:64])
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return any(self.carries(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj))
        return False

    def _locals_carry(self, frame) -> bool:
        return any(self.carries(val) for name, val in frame.f_locals.items()
                   if name != "self" or dataclasses.is_dataclass(val))

    def _derive(self, obj, depth: int = 0) -> None:
        """Tensors in a path function's return value are computed from the sample."""
        if isinstance(obj, torch.Tensor):
            self.derived[id(obj)] = obj
            if obj.grad_fn is not None:
                self.grad_fns.add(id(obj.grad_fn))
        elif depth < 2 and isinstance(obj, (tuple, list)):
            for o in obj:
                self._derive(o, depth + 1)
        elif depth < 2 and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                self._derive(getattr(obj, f.name), depth + 1)

    # ---------------------------------------------------------------- the hook
    def __call__(self, frame, event, arg):
        if event not in ("call", "return") or self.done:
            return
        code = frame.f_code
        if not _is_project(code):
            # the update: the optimiser's step called from a project function under the sample's path
            if (event == "call" and self.started and code.co_filename.endswith("optim/optimizer.py")
                    and code.co_name == "wrapper" and _is_project(frame.f_back.f_code)):
                rec = self.frames.get(id(frame.f_back))
                if rec is not None and any(r[2] for r in self.frames.values()):
                    rec[2] = True
            return
        if event == "call":
            self.seq += 1
            self.frames[id(frame)] = [self.seq, _qualname(frame), self.started and self._locals_carry(frame), frame]
            return
        rec = self.frames.pop(id(frame), None)
        if rec is None:
            return
        if not self.started and rec[1] == "Systems.batch" and self.carries(arg):
            self.started = True  # the collector's batch hands out the sample's state: its step begins
        if self.started and (rec[2] or self.carries(arg) or self._locals_carry(frame)):
            self.path.setdefault(rec[1], rec[0])
            self._derive(arg)
        if self.started and rec[1] == "Learner.step":  # the learner's update is made: the path ends
            self.done = True
            for seq, name, touched, open_frame in self.frames.values():  # callers still running (the epoch)
                if touched or self._locals_carry(open_frame):
                    self.path.setdefault(name, seq)
            self.frames.clear()


def measure() -> list[str]:
    """The functions on the sample's path, in the order of their first call."""
    from aits.systems import Systems

    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(tmp)
        found = {}
        batch = Systems.batch

        def spy(self, *a, **k):  # the first state a collector hands out is the first sample shipped (K = 0)
            out = batch(self, *a, **k)
            found.setdefault("x", out[1][0].copy() if isinstance(out, tuple) else out.x[0].copy())
            found.setdefault("v", out[2][0].copy() if isinstance(out, tuple) else out.v[0].copy())
            return out

        Systems.batch = spy
        try:
            _train(cfg)
        finally:
            Systems.batch = batch
        tracer = PathTracer(found["x"], found["v"])
        cfg = tiny_config(str(Path(tmp) / "traced"))
        sys.setprofile(tracer)
        try:
            _train(cfg)
        finally:
            sys.setprofile(None)
    return sorted(tracer.path, key=tracer.path.get)


def main(argv=None) -> int:
    path = measure()
    for i, name in enumerate(path, 1):
        print(f"{i:3d}  {name}")
    print(f"{len(path)} project functions from the collector's step to the learner's update (goal: <= {LIMIT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
