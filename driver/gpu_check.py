"""Device check of the recommended step rule: on a CUDA machine, the recursive attempt, a passage
rollout and the passage gradient of ``configs/ray.yaml``'s rule on the GPU equal the CPU's.

    python driver/gpu_check.py [--device cuda] [--steps 300]

Prints the largest relative differences and ``CHECK ok`` (exit 0) or ``CHECK MISMATCH`` (exit 1);
without the device, one line saying so (exit 2). docs/PERFORMANCE.md has the figures of a run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from aits import Config, NormScales, Samples, Stepper, build_model
from aits.passage import passage_gradient, rollout
from aits.physics import kepler_ic

ROOT = Path(__file__).resolve().parents[1]


def run_on(device: str, cfg: Config, steps: int) -> dict:
    """The same perturbed model and Kepler states (e = 0.3 ... 0.95) on ``device``."""
    model = build_model(cfg, "cpu")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # an untrained model is ~ constant: make g depend on the state
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model = model.to(device)
    stepper = Stepper(cfg, NormScales(), device=device)
    es = [0.3, 0.7, 0.9, 0.95]
    s = Samples.empty(0, 2, 2, capacity=len(es))
    for i, e in enumerate(es):
        s.m[i], s.x[i], s.v[i], _ = kepler_ic(e, 1.0)
    att = stepper.attempt(model, stepper.prepare(s))
    with torch.no_grad():
        errs, T, _ = rollout(model, stepper, s.m, s.x, s.v, steps)
    grads, _ = passage_gradient(model, s, stepper, cfg, np.random.default_rng(0))
    cpu = lambda t: t.detach().double().cpu()  # noqa: E731
    return {"dt": cpu(att.dt), "rel_dE": cpu(att.rel_dE), "errs": cpu(errs), "T": cpu(T),
            "grads": {k: cpu(v) for k, v in grads.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300, help="passage rollout steps")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: error: no CUDA device here (torch {torch.__version__}); run it on a GPU machine")
        return 2
    cfg = Config.load(ROOT / "configs" / "ray.yaml")
    ref, dev = run_on("cpu", cfg, args.steps), run_on(args.device, cfg, args.steps)
    rel = lambda a, b: float(((a - b).abs() / a.abs().clamp_min(1e-300)).max())  # noqa: E731
    diffs = {"attempt dt": rel(ref["dt"], dev["dt"]), "attempt rel_dE": rel(ref["rel_dE"], dev["rel_dE"]),
             "rollout max |dE/E| (absolute)": float((ref["errs"] - dev["errs"]).abs().max()),
             "rollout time": rel(ref["T"], dev["T"]),
             "passage gradient (norm)": max(float((ref["grads"][k] - dev["grads"][k]).norm()
                                                  / ref["grads"][k].norm().clamp_min(1e-300)) for k in ref["grads"])}
    for k, v in diffs.items():
        print(f"{k:32s} {v:.3g}")
    ok = diffs["rollout time"] < 1e-9 and diffs["passage gradient (norm)"] < 1e-6 and diffs["attempt dt"] < 1e-12
    print("CHECK", "ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
